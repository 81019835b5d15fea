"""BatchNorm(affine=False) in training mode from per-channel shifted sums, batched over the E edges that
leave one node of a DARTS cell: the middle BN of SepConv, whose statistics the preceding pointwise
convolution summed in its epilogue (:func:`fastnas.kernels.pointwise_conv.pointwise_conv_stats`; Liu,
Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019; Ioffe & Szegedy, "Batch
Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift", ICML 2015).

For ``z`` [E, N, C, H, W] and the [E, C] sums ``total = sum (z - shift)``, ``total_sq = sum (z - shift)^2``
over (N, H, W), with ``count = N*H*W`` (all math in float32, float64 for float64)::

    d     = total / count                      mean = shift + d        (shift: a constant)
    v     = total_sq / count - d^2             var  = max(v, 0)        rstd = (var + eps)^-1/2
    zhat  = (z - mean) * rstd                  (stored in z's dtype; mean and var returned, detached)

exactly as :func:`fastnas.kernels.pointwise_conv.batch_norm_from_stats`, the plain-PyTorch reference
(:func:`batch_norm_from_stats_reference`). Backward, with ``g = grad zhat`` and the per-(e, c) sums over
(N, H, W) ``S1 = sum g`` and ``S2 = sum g * (z - mean)``::

    grad z        = g * rstd
    grad v        = -1/2 * S2 * rstd^3   where v > 0, else 0   (clamp_min passes no gradient at v <= 0)
    grad total    = (-rstd * S1 - 2 * d * grad v) / count      (through d in mean and in d^2)
    grad total_sq = grad v / count

``zhat`` and ``grad z`` keep ``z``'s layout (its strides when ``z`` is dense, e.g. channels-last per edge,
memory [E, N, H, W, C]; else the dense layout of the same dimension order, as ``torch.empty_like``);
``grad total``/``grad total_sq`` have the dtypes of ``total``/``total_sq``. Any tensor is read through its
strides; ``total``, ``total_sq`` and ``shift`` may have any floating dtype.

:func:`batch_norm_from_stats` runs the operator ``torch.ops.fastnas.batch_norm_from_stats`` (autograd
through ``torch.ops.fastnas.batch_norm_from_stats_backward``) where
:func:`fastnas.kernels._common.use_kernels` allows, else the reference. The operators run the Triton
kernels where :func:`triton_supports` the tensors, else the same formulas in PyTorch (float64 always); both
have fake implementations for ``torch.compile(fullgraph=True)``; no double backward.

Kernels (fp32 math; statistics recomputed from the [E, C] sums in every program, a few flops):
- forward, one launch: ``_forward_kernel``, one program per [BLOCK_C x BLOCK_P] tile of one (e, n), the
  channel block fastest: mean/rstd of its channels, then the tile of ``zhat``; the programs of sample 0's
  first pixel block also store ``mean`` and ``var``.
- backward, two launches (one when only ``grad z`` is needed): ``_backward_reduce_kernel``, grid
  (E * channel blocks, S), writes the partial S1/S2 of each of S chunks of the N*H*W reduction to [S, E, C]
  buffers (every element written: no zero fill, no atomics, deterministic); ``_backward_kernel``, tiled as
  the forward, writes ``grad z = g * rstd`` (which needs no sums), and its programs of sample 0's first
  pixel block add up the S partials of their channels and write ``grad total``/``grad total_sq``. No
  full-size temporary besides ``grad z``. Offsets are int64 wherever a product can exceed 2**31.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels import pointwise_conv as _pointwise_conv
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["batch_norm_from_stats", "batch_norm_from_stats_reference"]


_MAX_BLOCK_C = 64  # channels per tile
_TILE = 2048  # elements per tile of the elementwise kernels (BLOCK_C * BLOCK_P)
_REDUCE_TILE = 2048  # elements per step of the reduction kernel (BLOCK_C * BLOCK_M)
_PARTIAL_TILE = 1024  # partial sums per step of the finalising programs (BLOCK_S * BLOCK_C)
_MAX_SPLITS = 64
_MAX_PROGRAMS = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Arguments, layouts, reference
# --------------------------------------------------------------------------------------------------


def _check_args(z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor) -> None:
    """The reference's checks (same messages), plus dtypes and devices; raises ``TypeError`` or
    ``ValueError``."""
    name = "batch_norm_from_stats"
    if not isinstance(z, Tensor) or z.dim() != 5:
        raise _common.shape_error(name, "z", z, "[E, N, C, H, W]")
    _common.check_float_dtype(name, "`z`", z.dtype)
    e, n, c, h, w = z.shape
    for arg, t in (("total", total), ("total_sq", total_sq), ("shift", shift)):
        if not isinstance(t, Tensor) or tuple(t.shape) != (e, c):
            raise _common.shape_error(name, arg, t, f"[E, C] = {(e, c)} for `z` {tuple(z.shape)}")
        _common.check_float_dtype(name, f"`{arg}`", t.dtype)
        _common.check_device_match(name, f"`{arg}`", t, "`z`", z)
    if n * h * w < 1:
        raise ValueError(f"{name}: `z` {tuple(z.shape)} has no values per channel (N*H*W = 0).")


def batch_norm_from_stats_reference(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """The plain-PyTorch reference, :func:`fastnas.kernels.pointwise_conv.batch_norm_from_stats` (about ten
    ATen ops forward, fifteen backward); autograd through it gives the reference gradients."""
    return _pointwise_conv.batch_norm_from_stats(z, total, total_sq, shift, eps)


def _is_dense(t: Tensor) -> bool:
    """Whether ``t`` is non-overlapping and dense (its elements fill ``numel()`` consecutive slots)."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _like_z_strides(z: Tensor) -> tuple[int, ...]:
    """Strides of ``zhat``/``grad z``: ``z``'s own when it is dense, else ``torch.empty_like``'s (dense,
    ``z``'s dimension order; what the reference's elementwise ops give)."""
    if _is_dense(z):
        return tuple(z.stride())
    return tuple(torch.empty_like(z, device="meta").stride())


def _flat(t: Tensor) -> bool:
    """Whether pixel (h, w) of ``t`` [E, N, C, H, W] lies at ``(h*W + w) * stride(W)``."""
    return t.shape[3] == 1 or t.stride(3) == t.shape[4] * t.stride(4)


def _stats(
    z: Tensor, total: Tensor, total_sq: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """``(d, v, var, rstd, count)`` per (e, c) in the accumulation dtype, as the reference computes them."""
    acc = _common.acc_dtype(z.dtype)
    count = z.shape[1] * z.shape[3] * z.shape[4]
    d = total.to(acc) / count
    v = total_sq.to(acc) / count - d * d
    var = v.clamp_min(0.0)
    return d, v, var, (var + eps).rsqrt(), count


def _per_channel(t: Tensor) -> Tensor:
    return t[:, None, :, None, None]


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (float64, and devices/dtypes the kernels do not handle)
# --------------------------------------------------------------------------------------------------


def _torch_forward(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    d, _, var, rstd, _ = _stats(z, total, total_sq, eps)
    mean = shift.to(d.dtype) + d
    zhat = _empty(tuple(z.shape), z.device, z.dtype, stride=_like_z_strides(z))
    zhat.copy_((z.to(d.dtype) - _per_channel(mean)) * _per_channel(rstd))
    return zhat, mean, var


def _torch_backward(
    g: Tensor, z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float,
    needs_z: bool, needs_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    d, v, _, rstd, count = _stats(z, total, total_sq, eps)
    acc = d.dtype
    gf = g.to(acc)
    grad_z, grad_total, grad_total_sq = (z.new_empty((0,)) for _ in range(3))
    if needs_z:
        grad_z = _empty(tuple(z.shape), z.device, z.dtype, stride=_like_z_strides(z))
        grad_z.copy_(gf * _per_channel(rstd))
    if needs_stats:
        mean = shift.to(acc) + d
        s1 = gf.sum(dim=(1, 3, 4))
        s2 = (gf * (z.to(acc) - _per_channel(mean))).sum(dim=(1, 3, 4))
        grad_v = torch.where(v > 0, -0.5 * s2 * rstd * rstd * rstd, 0.0)
        grad_total = ((-rstd * s1 - 2.0 * d * grad_v) / count).to(total.dtype)
        grad_total_sq = (grad_v / count).to(total_sq.dtype)
    return grad_z, grad_total, grad_total_sq


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _pixel_offsets(p, WIDTH, s_h, s_w, FLAT: tl.constexpr):
        """int64 offsets of flat pixel indices ``p`` (h*W + w) for H/W strides ``s_h``/``s_w``."""
        p64 = p.to(tl.int64)
        if FLAT:  # s_h == WIDTH * s_w (NCHW, channels-last, expanded)
            off = p64 * s_w
        else:  # any other strides (sliced views)
            ph = p64 // WIDTH
            off = ph * s_h + (p64 - ph * WIDTH) * s_w
        return off

    @triton.jit
    def _channel_stats(total_ptr, total_sq_ptr, s_off, c_mask, count, eps):
        """``(d, v, var, rstd)`` of the channels at ``s_off`` of the [E, C] sums (0 / rsqrt(eps) where
        masked); IEEE divisions, as the reference."""
        t = tl.load(total_ptr + s_off, mask=c_mask, other=0.0).to(tl.float32)
        q = tl.load(total_sq_ptr + s_off, mask=c_mask, other=0.0).to(tl.float32)
        d = tl.math.div_rn(t, count)
        v = tl.math.div_rn(q, count) - d * d
        var = tl.where(v < 0.0, 0.0, v)  # clamp_min(0), NaN kept
        rstd = tl.math.rsqrt(var + eps)
        return d, v, var, rstd

    @triton.jit
    def _tile_index(C_BLKS, P_BLKS, N, BLOCK_C: tl.constexpr):
        """Program (((e*N + n)*P_BLKS + p_blk)*C_BLKS + c_blk): ``(e, n, p_blk, c, first)`` with the tile's
        channels ``c`` and whether it is sample 0's first pixel block."""
        pid = tl.program_id(0)
        c_blk = pid % C_BLKS
        rest = pid // C_BLKS
        p_blk = rest % P_BLKS
        rest = rest // P_BLKS
        n = rest % N
        e = rest // N
        return e, n, p_blk, c_blk * BLOCK_C + tl.arange(0, BLOCK_C), (n == 0) & (p_blk == 0)

    @triton.jit
    def _tile_offsets(e, n, c, p, WIDTH, s_e, s_n, s_c, s_h, s_w, FLAT: tl.constexpr):
        """int64 offsets of the [channels, pixels] tile of (e, n) for strides ``s_*``."""
        base = e.to(tl.int64) * s_e + n.to(tl.int64) * s_n
        return base + (c.to(tl.int64) * s_c)[:, None] + _pixel_offsets(p, WIDTH, s_h, s_w, FLAT)[None, :]

    @triton.jit
    def _forward_kernel(
        z_ptr,
        total_ptr,
        total_sq_ptr,
        shift_ptr,
        out_ptr,
        mean_ptr,
        var_ptr,
        C,
        WIDTH,
        HW,
        C_BLKS,
        P_BLKS,
        N,
        sz_e,
        sz_n,
        sz_c,
        sz_h,
        sz_w,
        so_e,
        so_n,
        so_c,
        so_h,
        so_w,
        count,
        eps,
        FLAT: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        """One [BLOCK_C, BLOCK_P] tile of zhat; mean and var stored by sample 0's first pixel block."""
        e, n, p_blk, c, first = _tile_index(C_BLKS, P_BLKS, N, BLOCK_C)
        c_mask = c < C
        s_off = e * C + c
        d, _, var, rstd = _channel_stats(total_ptr, total_sq_ptr, s_off, c_mask, count, eps)
        mean = tl.load(shift_ptr + s_off, mask=c_mask, other=0.0).to(tl.float32) + d
        if first:
            tl.store(mean_ptr + s_off, mean, mask=c_mask)
            tl.store(var_ptr + s_off, var, mask=c_mask)
        p = p_blk * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (p < HW)[None, :]
        z_off = _tile_offsets(e, n, c, p, WIDTH, sz_e, sz_n, sz_c, sz_h, sz_w, FLAT)
        zt = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
        zhat = (zt - mean[:, None]) * rstd[:, None]
        o_off = _tile_offsets(e, n, c, p, WIDTH, so_e, so_n, so_c, so_h, so_w, FLAT)
        tl.store(out_ptr + o_off, zhat.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_reduce_kernel(
        g_ptr,
        z_ptr,
        total_ptr,
        shift_ptr,
        part_g_ptr,
        part_gz_ptr,
        E,
        C,
        WIDTH,
        HW,
        M,
        CHUNK,
        C_BLKS,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        sz_e,
        sz_n,
        sz_c,
        sz_h,
        sz_w,
        count,
        FLAT: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        """Program (e*C_BLKS + c_blk, s): sum g and sum g * (z - mean) of BLOCK_C channels of edge e over
        chunk s of the N*H*W values, stored at [s, e, c]."""
        pid = tl.program_id(0)
        s = tl.program_id(1)
        c_blk = pid % C_BLKS
        e = pid // C_BLKS
        c = c_blk * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = c < C
        s_off = e * C + c
        t = tl.load(total_ptr + s_off, mask=c_mask, other=0.0).to(tl.float32)
        mean = tl.load(shift_ptr + s_off, mask=c_mask, other=0.0).to(tl.float32) + tl.math.div_rn(t, count)
        c64 = c.to(tl.int64)
        g_base = e.to(tl.int64) * sg_e + (c64 * sg_c)[:, None]
        z_base = e.to(tl.int64) * sz_e + (c64 * sz_c)[:, None]
        acc_g = tl.zeros([BLOCK_C, BLOCK_M], dtype=tl.float32)
        acc_gz = tl.zeros([BLOCK_C, BLOCK_M], dtype=tl.float32)
        start = s * CHUNK
        for m0 in range(start, start + CHUNK, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            n = m // HW
            p = m - n * HW
            n64 = n.to(tl.int64)
            mask = c_mask[:, None] & (m < M)[None, :]
            g_off = g_base + (n64 * sg_n + _pixel_offsets(p, WIDTH, sg_h, sg_w, FLAT))[None, :]
            z_off = z_base + (n64 * sz_n + _pixel_offsets(p, WIDTH, sz_h, sz_w, FLAT))[None, :]
            g = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
            zt = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(tl.float32)
            acc_g += g
            acc_gz += g * (zt - mean[:, None])
        out = s * E * C + s_off
        tl.store(part_g_ptr + out, tl.sum(acc_g, axis=1), mask=c_mask)
        tl.store(part_gz_ptr + out, tl.sum(acc_gz, axis=1), mask=c_mask)

    @triton.jit
    def _backward_kernel(
        g_ptr,
        total_ptr,
        total_sq_ptr,
        part_g_ptr,
        part_gz_ptr,
        grad_z_ptr,
        grad_total_ptr,
        grad_total_sq_ptr,
        E,
        C,
        WIDTH,
        HW,
        C_BLKS,
        P_BLKS,
        N,
        SPLITS,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        sd_e,
        sd_n,
        sd_c,
        sd_h,
        sd_w,
        count,
        eps,
        FLAT: tl.constexpr,
        NEEDS_Z: tl.constexpr,
        NEEDS_STATS: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        """One [BLOCK_C, BLOCK_P] tile of grad z = g * rstd (NEEDS_Z); sample 0's first pixel block adds
        up the SPLITS partial sums of its channels and stores grad total and grad total_sq (NEEDS_STATS).
        Without NEEDS_Z the grid is one program per channel block (N = P_BLKS = 1)."""
        e, n, p_blk, c, first = _tile_index(C_BLKS, P_BLKS, N, BLOCK_C)
        c_mask = c < C
        s_off = e * C + c
        d, v, _, rstd = _channel_stats(total_ptr, total_sq_ptr, s_off, c_mask, count, eps)
        if NEEDS_STATS:  # noqa: SIM102 (a constexpr branch around a runtime one)
            if first:
                acc_g = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
                acc_gz = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
                for s0 in range(0, SPLITS, BLOCK_S):
                    ss = s0 + tl.arange(0, BLOCK_S)
                    part = ss[:, None] * (E * C) + s_off[None, :]
                    pmask = (ss < SPLITS)[:, None] & c_mask[None, :]
                    acc_g += tl.load(part_g_ptr + part, mask=pmask, other=0.0)
                    acc_gz += tl.load(part_gz_ptr + part, mask=pmask, other=0.0)
                s1 = tl.sum(acc_g, axis=0)
                s2 = tl.sum(acc_gz, axis=0)
                grad_v = tl.where(v > 0.0, -0.5 * s2 * (rstd * rstd * rstd), 0.0)
                grad_d = -rstd * s1 - 2.0 * d * grad_v
                grad_t = tl.math.div_rn(grad_d, count)
                grad_q = tl.math.div_rn(grad_v, count)
                tl.store(grad_total_ptr + s_off, grad_t.to(grad_total_ptr.dtype.element_ty), mask=c_mask)
                tl.store(
                    grad_total_sq_ptr + s_off, grad_q.to(grad_total_sq_ptr.dtype.element_ty), mask=c_mask
                )
        if NEEDS_Z:
            p = p_blk * BLOCK_P + tl.arange(0, BLOCK_P)
            mask = c_mask[:, None] & (p < HW)[None, :]
            g_off = _tile_offsets(e, n, c, p, WIDTH, sg_e, sg_n, sg_c, sg_h, sg_w, FLAT)
            g = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
            d_off = _tile_offsets(e, n, c, p, WIDTH, sd_e, sd_n, sd_c, sd_h, sd_w, FLAT)
            tl.store(grad_z_ptr + d_off, (g * rstd[:, None]).to(grad_z_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


def _tiles(c: int, hw: int) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_P)`` of the elementwise kernels."""
    block_c = _common.pow2_block(c, 2, _MAX_BLOCK_C)
    return block_c, _common.pow2_block(hw, 2, max(2, _TILE // block_c))


def _num_splits(m: int, programs: int, block: int) -> int:
    """Number of chunks the N*H*W reduction of the backward is split into (``programs`` = E * channel
    blocks; :func:`fastnas.kernels._common.num_splits`); 1 under the interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(m, programs, block, _MAX_SPLITS)


def _grid(programs: int) -> tuple[int]:
    if programs > _MAX_PROGRAMS:
        raise ValueError(
            f"batch_norm_from_stats: {programs} tiles exceed the grid limit; split the batch into parts."
        )
    return (programs,)


def _launch_forward(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward (one launch): ``z`` with any strides, the [E, C] sums contiguous."""
    e, n, c, h, w = z.shape
    hw = h * w
    out = _empty((e, n, c, h, w), z.device, z.dtype, stride=_like_z_strides(z))
    mean = _empty((e, c), z.device, torch.float32)  # every (e, c) written by sample 0's first block
    var = _empty((e, c), z.device, torch.float32)
    if out.numel() == 0:
        return out, mean, var
    block_c, block_p = _tiles(c, hw)
    c_blks, p_blks = triton.cdiv(c, block_c), triton.cdiv(hw, block_p)
    _forward_kernel[_grid(e * n * p_blks * c_blks)](
        z,
        total,
        total_sq,
        shift,
        out,
        mean,
        var,
        c,
        w,
        hw,
        c_blks,
        p_blks,
        n,
        *z.stride(),
        *out.stride(),
        float(n * hw),
        float(eps),
        FLAT=_flat(z) and _flat(out),
        BLOCK_C=block_c,
        BLOCK_P=block_p,
    )
    return out, mean, var


def _launch_backward(
    g: Tensor, z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float,
    needs_z: bool, needs_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Triton backward: the reduction (when ``needs_stats``) and the finalising/elementwise kernel;
    returns ``(grad_z, grad_total, grad_total_sq)``, empty tensors for what is not needed."""
    e, n, c, h, w = z.shape
    hw, m = h * w, n * h * w
    dev = z.device
    grad_z = _empty(tuple(z.shape), dev, z.dtype, stride=_like_z_strides(z)) if needs_z else z.new_empty((0,))
    grad_total = _empty((e, c), dev, total.dtype) if needs_stats else z.new_empty((0,))
    grad_total_sq = _empty((e, c), dev, total_sq.dtype) if needs_stats else z.new_empty((0,))
    if z.numel() == 0 or not (needs_z or needs_stats):
        return grad_z, grad_total, grad_total_sq
    flat = _flat(g) and _flat(z) and (not needs_z or _flat(grad_z))
    count = float(m)
    block_c, block_p = _tiles(c, hw)
    c_blks = triton.cdiv(c, block_c)
    splits, block_s = 1, 2
    part_g = part_gz = total  # not read without needs_stats
    if needs_stats:
        block_m = _common.pow2_block(m, 2, max(2, _REDUCE_TILE // block_c))
        chunk, splits = _common.split_chunks(m, _num_splits(m, e * c_blks, block_m), block_m)
        part_g = _empty((splits, e, c), dev, torch.float32)
        part_gz = _empty((splits, e, c), dev, torch.float32)
        _backward_reduce_kernel[(e * c_blks, splits)](
            g,
            z,
            total,
            shift,
            part_g,
            part_gz,
            e,
            c,
            w,
            hw,
            m,
            chunk,
            c_blks,
            *g.stride(),
            *z.stride(),
            count,
            FLAT=flat,
            BLOCK_C=block_c,
            BLOCK_M=block_m,
        )
        block_s = _common.pow2_block(splits, 2, max(2, _PARTIAL_TILE // block_c))
    # without grad z: one program per channel block, as sample 0's first pixel block
    n_grid, p_blks = (n, triton.cdiv(hw, block_p)) if needs_z else (1, 1)
    dst = grad_z if needs_z else g
    _backward_kernel[_grid(e * n_grid * p_blks * c_blks)](
        g,
        total,
        total_sq,
        part_g,
        part_gz,
        dst,
        grad_total if needs_stats else total,
        grad_total_sq if needs_stats else total,
        e,
        c,
        w,
        hw,
        c_blks,
        p_blks,
        n_grid,
        splits,
        *g.stride(),
        *dst.stride(),
        count,
        float(eps),
        FLAT=flat,
        NEEDS_Z=needs_z,
        NEEDS_STATS=needs_stats,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        BLOCK_S=block_s,
    )
    return grad_z, grad_total, grad_total_sq


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::batch_norm_from_stats", mutates_args=())
def _batch_norm_from_stats_op(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(zhat, mean, var)`` of the module docstring; Triton where :func:`triton_supports`, else PyTorch."""
    _check_args(z, total, total_sq, shift)
    total, total_sq, shift = total.contiguous(), total_sq.contiguous(), shift.contiguous()
    if triton_supports(z.device, z.dtype):
        return _launch_forward(z, total, total_sq, shift, eps)
    return _torch_forward(z, total, total_sq, shift, eps)


@_batch_norm_from_stats_op.register_fake
def _batch_norm_from_stats_fake(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    e, _, c, _, _ = z.shape
    acc = _common.acc_dtype(z.dtype)
    zhat = z.new_empty_strided(tuple(z.shape), _like_z_strides(z))
    return zhat, z.new_empty((e, c), dtype=acc), z.new_empty((e, c), dtype=acc)


@torch.library.custom_op("fastnas::batch_norm_from_stats_backward", mutates_args=())
def _batch_norm_from_stats_backward_op(
    grad_zhat: Tensor, z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float,
    needs_z: bool, needs_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(grad_z, grad_total, grad_total_sq)``; empty tensors for the gradients that are not needed
    (``needs_stats`` covers both sums)."""
    total, total_sq, shift = total.contiguous(), total_sq.contiguous(), shift.contiguous()
    if triton_supports(z.device, z.dtype):
        return _launch_backward(grad_zhat, z, total, total_sq, shift, eps, needs_z, needs_stats)
    return _torch_backward(grad_zhat, z, total, total_sq, shift, eps, needs_z, needs_stats)


@_batch_norm_from_stats_backward_op.register_fake
def _batch_norm_from_stats_backward_fake(
    grad_zhat: Tensor, z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float,
    needs_z: bool, needs_stats: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    grad_z = z.new_empty_strided(tuple(z.shape), _like_z_strides(z)) if needs_z else z.new_empty((0,))
    grad_total = total.new_empty(tuple(total.shape)) if needs_stats else z.new_empty((0,))
    grad_total_sq = total_sq.new_empty(tuple(total_sq.shape)) if needs_stats else z.new_empty((0,))
    return grad_z, grad_total, grad_total_sq


def _setup_context(ctx, inputs, output) -> None:
    z, total, total_sq, shift, eps = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(z, total, total_sq, shift)
    ctx.eps = eps


def _backward(ctx, grad_zhat, _grad_mean, _grad_var):
    needs_z = bool(ctx.needs_input_grad[0])
    needs_total, needs_total_sq = bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])
    if grad_zhat is None or not (needs_z or needs_total or needs_total_sq):
        return None, None, None, None, None
    z, total, total_sq, shift = ctx.saved_tensors
    grad_z, grad_total, grad_total_sq = torch.ops.fastnas.batch_norm_from_stats_backward(
        grad_zhat, z, total, total_sq, shift, ctx.eps, needs_z, needs_total or needs_total_sq
    )
    return (
        grad_z if needs_z else None,
        grad_total if needs_total else None,
        grad_total_sq if needs_total_sq else None,
        None,
        None,
    )


_batch_norm_from_stats_op.register_autograd(_backward, setup_context=_setup_context)


def batch_norm_from_stats(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """BN(affine=False) in training mode of each edge's ``z`` from the per-channel shifted sums of
    :func:`fastnas.kernels.pointwise_conv.pointwise_conv_stats` (the middle BN of the DARTS SepConv); a
    drop-in replacement of :func:`fastnas.kernels.pointwise_conv.batch_norm_from_stats` in one Triton
    launch forward and at most two backward.

    Args:
        z: [E, N, C, H, W], any strides (the ``out`` of ``pointwise_conv_stats``).
        total, total_sq: [E, C] per-channel sum and sum of squares of ``z - shift`` over (N, H, W);
            differentiable.
        shift: [E, C] the value the sums were shifted by (a constant: no gradient).
        eps: BN epsilon.

    Returns:
        ``(zhat, mean, var)``: ``zhat = (z - mean) * rsqrt(var + eps)`` in ``z``'s dtype and layout (fp32
        math, float64 for float64), differentiable w.r.t. ``z``, ``total`` and ``total_sq``; ``mean = shift +
        d`` with ``d = total / count`` and the biased ``var = total_sq / count - d^2`` (clamped at 0), [E, C]
        in float32 (float64 for float64), detached; ``count = N*H*W``.

    Uses the Triton operator when :func:`fastnas.kernels._common.use_kernels` accepts ``z``, else
    :func:`batch_norm_from_stats_reference`.
    """
    _check_args(z, total, total_sq, shift)
    if _common.use_kernels(z):
        return torch.ops.fastnas.batch_norm_from_stats(z, total, total_sq, shift, float(eps))
    return batch_norm_from_stats_reference(z, total, total_sq, shift, eps)
