"""Pointwise (1x1) convolution with the following BN's batch statistics computed in its epilogue, batched
over the E edges that leave one node of a DARTS cell (SepConv and DilConv end in pointwise conv -> BN;
Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019; Ioffe & Szegedy, "Batch
Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift", ICML 2015).

For ``x`` [N, C_in, H, W] shared by all edges (or [E, N, C_in, H, W], one per edge) and ``weight``
[E, C_out, C_in]::

    out[e, n, :, h, w] = weight[e] @ x_e[n, :, h, w]          (fp32 accumulation, stored in x's dtype)
    shift[e, c]        ~ out[e, 0, c, 0, 0]                   (a value of the channel; not differentiable)
    total[e, c]        = sum_{n, h, w} (out[e, n, c, h, w] - shift[e, c])     (of the stored values)
    total_sq[e, c]     = sum_{n, h, w} (out[e, n, c, h, w] - shift[e, c])^2

The sums are shifted by a value of the channel so that the variance ``total_sq / count - (total /
count)^2`` keeps its precision when |mean| >> std (the one-pass ``E[z^2] - E[z]^2`` of unshifted sums
loses all of it in float32 once mean^2 / var exceeds ~1e7; the shifted form depends only on how far the
shift is from the mean, here one sample's spread: the shifted-data algorithm of Chan, Golub & LeVeque,
"Algorithms for Computing the Sample Variance: Analysis and Recommendations", The American Statistician
1983). ``shift`` is treated as a constant (the mean and variance do not depend on it), so ``total``,
``total_sq`` and ``out`` are differentiable: with ``g = grad_out + grad_total[e, c] + 2 * (out - shift) *
grad_total_sq[e, c]``, ``grad x_e = weight[e]^T @ g[e]`` (summed over e for a shared ``x``) and
``grad weight[e] = sum_{n, h, w} g[e] x_e^T``.
:func:`batch_norm_from_stats` turns ``(out, total, total_sq, shift)`` into BN(affine=False, training) of
each edge, so autograd through both gives the gradient of ``F.batch_norm``.

Layouts: ``x`` is read through its strides (no copy). ``out`` is channels-last per edge (memory
[E, N, H, W, C_out]) when ``x``'s channel stride is 1 (C_in > 1, H*W > 1), else contiguous; ``grad x``
follows the same rule; ``grad weight`` is contiguous.

:func:`pointwise_conv_stats` runs ``torch.ops.fastnas.pointwise_conv_stats`` where
:func:`fastnas.kernels._common.use_kernels` allows, else :func:`pointwise_conv_stats_reference` (einsum in
the accumulation dtype, autograd). The operator's forward is the Triton kernel where :func:`triton_supports`
the tensors, else the same math in PyTorch (float64 always). So is the backward operator
``torch.ops.fastnas.pointwise_conv_stats_backward``: Triton kernels that form ``g`` on the fly (below), else
``g`` elementwise and two einsums (never expanding a shared ``x``). Autograd passes ``None``, not zeros, for
the outputs a loss does not use (``set_materialize_grads(False)``); their terms of ``g`` are left out. Both
operators have fake implementations for ``torch.compile(fullgraph=True)``; no double backward.

Dtypes: float32, bfloat16, float16 on the kernel; ``total``/``total_sq``/``shift`` are float32 (float64 for
float64).

Kernel: ``_pointwise_conv_stats_kernel``, one program per [BLOCK_CO x BLOCK_P] tile of one (e, n), the
output-channel block fastest, then the edge (so programs reading the same x tile run together). It loops
over C_in with ``tl.dot`` into an fp32 accumulator, stores the tile rounded to the output dtype and adds
its per-channel shifted sum and sum of squares to zero-initialised fp32 [E, C_out] buffers with
``tl.atomic_add`` (no separate statistics pass, no host synchronisation; the sums' last bits depend on the
order programs finish). The shift (the conv at sample 0's first pixel, fp32, summed over C_in in the
same loop) is computed by every program alike, so all programs subtract the same value. Offsets are int64
wherever a product can exceed 2**31.

Backward kernels (at most three launches, no full-size intermediate): ``g`` is never stored; every tile of
it is formed where it is used (``_grad_tile``, fp32) from ``grad_out``, ``out``, ``shift`` and the
per-channel ``grad_total`` / ``grad_total_sq``, each term compiled in only when its gradient is given
(``HAS_GRAD_OUT`` / ``HAS_TOTAL`` / ``HAS_TOTAL_SQ``); ``x``, ``out`` and the gradients are read through their
strides (expanded stride-0 gradients included).

- ``_grad_x_kernel``: one program per [BLOCK_CI x BLOCK_P] tile of grad x of one (n) for a shared ``x``, of
  one (e, n) per edge; ``tl.dot(weight[e]^T tile, g tile)`` over C_out, and for a shared ``x`` over all E
  edges inside the program (the edge sum needs no second pass). Stored in x's dtype and layout.
- ``_grad_weight_kernel``: one program per [BLOCK_CO x BLOCK_CI] tile of grad weight[e] and chunk s of the
  N*H*W reduction (chunks of whole (sample, pixel block) tiles; enough chunks to fill the GPU, at most
  ``_MAX_SPLITS``): ``tl.dot(g tile, x_e tile^T)`` over its pixels, stored as a float32 partial
  [S, E, C_out, C_in] (every element written: no zero fill, no atomics, deterministic). With one chunk it
  stores the gradient itself; else ``_sum_partials_kernel`` adds the S partials in fp32 and stores them
  in the weight's dtype.

The dots accumulate in fp32: bf16/fp16 operands (``g`` rounded to x's dtype) on the tensor cores, fp32 in
IEEE precision with smaller tiles (the FMA dot holds both operands' K slices in registers; the caps keep
every kernel free of register spills on sm_80 and sm_90). Under the interpreter the operands are fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["batch_norm_from_stats", "pointwise_conv_stats", "pointwise_conv_stats_reference"]


# Tile sizes: each at least 16 (tl.dot), at most these, otherwise the next power of two of the extent.
_MAX_BLOCK_CO = 64
_MAX_BLOCK_P = 128
_MAX_BLOCK_K = 32
_MIN_BLOCK = 16
_MAX_PROGRAMS = 2**31 - 1
# Backward: weight-gradient tiles ([C_out, C_in] blocks) and the pixels per step of their reduction; the
# reduction's splits (fp32 partials) and the block of the kernel that sums them.
_MAX_BLOCK_GW = 64
_MAX_BLOCK_R = 32
_MAX_SPLITS = 64
_BLOCK_SUM = 256
# float32 (IEEE) dots run on the FMA units with each thread holding whole K slices of both operands: the
# backward's fp32 tiles are capped lower so that they do not spill (benchmarks/aot.py, sm_80 and sm_90):
# grad x (C_in, pixels, C_out step), grad weight (pixels per step).
_F32_BLOCKS_GX = (32, 64, 16)
_F32_BLOCK_R = 16


# --------------------------------------------------------------------------------------------------
# Arguments, layouts, reference
# --------------------------------------------------------------------------------------------------


def _check_args(x: Tensor, weight: Tensor) -> None:
    """Validate the arguments of :func:`pointwise_conv_stats`; raises ``TypeError``/``ValueError``."""
    name = "pointwise_conv_stats"
    if not isinstance(x, Tensor) or x.dim() not in (4, 5):
        shapes = "[N, C_in, H, W] (one input shared by all edges) or [E, N, C_in, H, W] (one input per edge)"
        raise _common.shape_error(name, "x", x, shapes)
    _common.check_float_dtype(name, "`x`", x.dtype)
    if not isinstance(weight, Tensor) or weight.dim() != 3:
        raise _common.shape_error(
            name,
            "weight",
            weight,
            "[E, C_out, C_in] (the 1x1 kernels of the E edges; squeeze the trailing 1x1 of a conv weight)",
        )
    c_in = x.shape[-3]
    if weight.shape[2] != c_in:
        raise ValueError(
            f"{name}: `weight` {tuple(weight.shape)} expects C_in = {weight.shape[2]} input channels but "
            f"`x` {tuple(x.shape)} has {c_in}."
        )
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"{name}: `weight` {tuple(weight.shape)} has no edges or no output channels.")
    if x.dim() == 5 and x.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{name}: `x` holds inputs of {x.shape[0]} edges but `weight` has E = {weight.shape[0]}; pass "
            f"one input per edge or a single shared [N, C_in, H, W] input."
        )
    _common.check_dtype_match(name, "`weight`", weight, "`x`", x, "cast them to one dtype")
    _common.check_device_match(name, "`weight`", weight, "`x`", x)


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` (4-D or 5-D) has its channels innermost in each [N, C, H, W] slice."""
    c, h, w = x.shape[-3:]
    return c > 1 and h * w > 1 and x.stride(-3) == 1


def _relayout(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` (4-D or 5-D) as contiguous NCHW, or channels-last per [N, C, H, W] slice; no copy if it is."""
    if not channels_last:
        return t.contiguous()
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


_empty = _common.empty  # the buffers the kernel writes in full (tests replace it with a NaN fill)


def _out_shape(x: Tensor, weight: Tensor) -> tuple[int, int, int, int, int]:
    n, _, h, w = x.shape[-4:]
    return (weight.shape[0], n, weight.shape[1], h, w)


def pointwise_conv_stats_reference(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain PyTorch reference: per edge the 1x1 conv as an einsum in the accumulation dtype (float32,
    float64 for float64 inputs; IEEE precision on every device), rounded to ``x``'s dtype, and the
    per-channel sums of the rounded values shifted by ``shift = out[:, 0, :, 0, 0]`` (detached; the
    kernel's shift is the same conv value before rounding). Autograd through it gives the reference
    gradients.

    Returns:
        ``(out, total, total_sq, shift)`` as :func:`pointwise_conv_stats`.
    """
    _check_args(x, weight)
    acc = _common.acc_dtype(x.dtype)
    xf, wf = x.to(acc), weight.to(acc)
    y = torch.einsum("eoi,nihw->enohw" if x.dim() == 4 else "eoi,enihw->enohw", wf, xf)
    out = _relayout(y.to(x.dtype), _channels_last(x))
    of = out.to(acc)
    shift = of[:, 0, :, 0, 0].detach().clone()
    d = of - shift[:, None, :, None, None]
    return out, d.sum(dim=(1, 3, 4)), (d * d).sum(dim=(1, 3, 4)), shift


def batch_norm_from_stats(
    z: Tensor, total: Tensor, total_sq: Tensor, shift: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """BN(affine=False) in training mode of each edge's conv output from the sums of
    :func:`pointwise_conv_stats` (the middle BN of the DARTS SepConv). Plain PyTorch, differentiable
    through ``z``, ``total`` and ``total_sq`` (``shift`` is a constant), so that
    ``batch_norm_from_stats(*pointwise_conv_stats(x, w))`` matches ``F.batch_norm`` of each edge's conv output
    in value and gradient.

    Args:
        z: [E, N, C, H, W] (the ``out`` of :func:`pointwise_conv_stats`).
        total, total_sq: [E, C] per-channel sum and sum of squares of ``z - shift`` over (N, H, W).
        shift: [E, C] the value the sums were shifted by (any value near the channel's mean; 0 gives the
            one-pass formula).
        eps: BN epsilon.

    Returns:
        ``(zhat, mean, var)``: ``zhat = (z - mean) * rsqrt(var + eps)`` in ``z``'s dtype (fp32 math, float64
        for float64), ``mean = shift + d`` with ``d = total / count`` and the biased ``var = total_sq / count
        - d^2`` (clamped at 0), [E, C], detached (for
        :func:`fastnas.kernels.mixed_bn_sum.update_running_stats`); ``count = N*H*W``.
    """
    name = "batch_norm_from_stats"
    if not isinstance(z, Tensor) or z.dim() != 5:
        raise _common.shape_error(name, "z", z, "[E, N, C, H, W]")
    e, n, c, h, w = z.shape
    for arg, t in (("total", total), ("total_sq", total_sq), ("shift", shift)):
        if not isinstance(t, Tensor) or tuple(t.shape) != (e, c):
            raise _common.shape_error(name, arg, t, f"[E, C] = {(e, c)} for `z` {tuple(z.shape)}")
    count = n * h * w
    if count < 1:
        raise ValueError(f"{name}: `z` {tuple(z.shape)} has no values per channel (N*H*W = 0).")
    acc = _common.acc_dtype(z.dtype)
    d = total.to(acc) / count
    var = (total_sq.to(acc) / count - d * d).clamp_min(0.0)
    mean = shift.detach().to(acc) + d
    rstd = (var + eps).rsqrt()
    zhat = (z.to(acc) - mean[:, None, :, None, None]) * rstd[:, None, :, None, None]
    return zhat.to(z.dtype), mean.detach(), var.detach()


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (float64, and devices/dtypes the kernel does not handle)
# --------------------------------------------------------------------------------------------------


def _torch_forward(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with torch.no_grad():
        return pointwise_conv_stats_reference(x, weight)


def _grad_of_out(
    grad_out: Tensor | None,
    grad_total: Tensor | None,
    grad_total_sq: Tensor | None,
    out: Tensor,
    shift: Tensor,
    acc: torch.dtype,
) -> Tensor:
    """``g = grad_out + grad_total[e, c] + 2 * (out - shift[e, c]) * grad_total_sq[e, c]`` in ``acc``, in
    ``out``'s layout (missing terms are 0), as ``grad_out + out * scale + offset`` with the per-channel
    ``scale = 2 * grad_total_sq`` and ``offset = grad_total - scale * shift``: at most two passes over the
    full-size tensors (one ``addcmul`` into a new tensor, one in-place broadcast add)."""

    def per_channel(t: Tensor) -> Tensor:
        return t[:, None, :, None, None]

    offset = grad_total.to(acc) if grad_total is not None else None
    g = torch.empty_like(out, dtype=acc)
    if grad_total_sq is not None:
        scale = 2.0 * grad_total_sq.to(acc)
        offset = -scale * shift.to(acc) if offset is None else offset - scale * shift.to(acc)
        if grad_out is not None:
            torch.addcmul(grad_out, out, per_channel(scale), out=g)
        else:
            torch.mul(out, per_channel(scale), out=g)
    elif grad_out is not None:
        g.copy_(grad_out)
    else:
        g.zero_()
    if offset is not None:
        g.add_(per_channel(offset))
    return g


# --------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _pointwise_conv_stats_kernel(
        x_ptr,
        w_ptr,
        out_ptr,
        total_ptr,
        total_sq_ptr,
        shift_ptr,
        E,
        C_IN,
        C_OUT,
        WIDTH,
        HW,
        CO_BLKS,
        P_BLKS,
        sx_e,
        sx_n,
        sx_c,
        sx_h,
        sx_w,
        so_e,
        so_n,
        so_c,
        so_p,
        FLAT_X: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_CO: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """Program ((n*P_BLKS + p_blk)*E + e)*CO_BLKS + co_blk: out tile [BLOCK_CO, BLOCK_P] of (e, n),
        stored, and its per-channel shifted sum / sum of squares added to total / total_sq.

        The shift of channel (e, co) is the conv output at the first pixel of sample 0, computed by every
        program with the same instructions on the same data (so bit-identical everywhere, no
        synchronisation) and stored by the programs of sample 0's first pixel block."""
        pid = tl.program_id(0)
        co_blk = pid % CO_BLKS
        rest = pid // CO_BLKS
        e = rest % E
        rest = rest // E
        p_blk = rest % P_BLKS
        n = rest // P_BLKS

        co = co_blk * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_mask = co < C_OUT
        p = p_blk * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < HW
        p64 = p.to(tl.int64)
        if FLAT_X:  # sx_h == WIDTH * sx_w (NCHW and channels-last): pixel p at p * sx_w
            x_pix = p64 * sx_w
        else:  # any other strides (sliced views)
            ph = p64 // WIDTH
            x_pix = ph * sx_h + (p64 - ph * WIDTH) * sx_w
        x_edge = x_ptr + e.to(tl.int64) * sx_e  # sample 0, pixel (0, 0) of this edge's input
        x_base = x_edge + n.to(tl.int64) * sx_n
        w_rows = w_ptr + e.to(tl.int64) * C_OUT * C_IN + co[:, None] * C_IN

        acc = tl.zeros([BLOCK_CO, BLOCK_P], dtype=tl.float32)
        shift = tl.zeros([BLOCK_CO], dtype=tl.float32)
        for k0 in range(0, C_IN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < C_IN
            wt = tl.load(w_rows + k[None, :], mask=co_mask[:, None] & k_mask[None, :], other=0.0)
            xt = tl.load(
                x_base + k.to(tl.int64)[:, None] * sx_c + x_pix[None, :],
                mask=k_mask[:, None] & p_mask[None, :],
                other=0.0,
            )
            x0 = tl.load(x_edge + k.to(tl.int64) * sx_c, mask=k_mask, other=0.0).to(tl.float32)
            shift += tl.sum(wt.to(tl.float32) * x0[None, :], axis=1)
            if UPCAST:  # the interpreter's bf16 dot is wrong; fp32 operands are exact there
                wt = wt.to(tl.float32)
                xt = xt.to(tl.float32)
            if IEEE:  # noqa: SIM108 (a constexpr branch of the kernel)
                acc = tl.dot(wt, xt, acc=acc, input_precision="ieee")
            else:
                acc = tl.dot(wt, xt, acc=acc)

        # Epilogue: round, store, statistics of the stored values.
        val = acc.to(out_ptr.dtype.element_ty)
        mask = co_mask[:, None] & p_mask[None, :]
        o_off = (
            e.to(tl.int64) * so_e
            + n.to(tl.int64) * so_n
            + co.to(tl.int64)[:, None] * so_c
            + (p64 * so_p)[None, :]
        )
        tl.store(out_ptr + o_off, val, mask=mask)
        r = tl.where(mask, val.to(tl.float32) - shift[:, None], 0.0)
        s_off = e * C_OUT + co
        if n == 0 and p_blk == 0:
            tl.store(shift_ptr + s_off, shift, mask=co_mask)
        tl.atomic_add(total_ptr + s_off, tl.sum(r, axis=1), mask=co_mask, sem="relaxed")
        tl.atomic_add(total_sq_ptr + s_off, tl.sum(r * r, axis=1), mask=co_mask, sem="relaxed")

    @triton.jit
    def _grad_tile(
        go_base,
        out_base,
        gt_base,
        gts_base,
        shift_base,
        o,
        o_mask,
        p_mask,
        go_pix,
        out_pix,
        sg_c,
        so_c,
        st_c,
        sq_c,
        HAS_GRAD_OUT: tl.constexpr,
        HAS_TOTAL: tl.constexpr,
        HAS_TOTAL_SQ: tl.constexpr,
        BLOCK_O: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        """``g`` of the [BLOCK_O, BLOCK_P] tile (output channels ``o``, pixels at ``go_pix`` / ``out_pix``)
        of one (e, n), fp32, 0 outside the masks: ``grad_out + grad_total[o] + 2 * (out - shift[o]) *
        grad_total_sq[o]`` with the absent terms left out. The bases point at (e, n) (``go_base``,
        ``out_base``) or at edge e (``gt_base``, ``gts_base``; ``shift_base`` of the contiguous shift)."""
        o64 = o.to(tl.int64)
        mask = o_mask[:, None] & p_mask[None, :]
        g = tl.zeros([BLOCK_O, BLOCK_P], dtype=tl.float32)
        if HAS_GRAD_OUT:
            go = tl.load(go_base + (o64 * sg_c)[:, None] + go_pix[None, :], mask=mask, other=0.0)
            g += go.to(tl.float32)
        if HAS_TOTAL:
            gt = tl.load(gt_base + o64 * st_c, mask=o_mask, other=0.0).to(tl.float32)
            g += gt[:, None]
        if HAS_TOTAL_SQ:
            gts = tl.load(gts_base + o64 * sq_c, mask=o_mask, other=0.0).to(tl.float32)
            sh = tl.load(shift_base + o64, mask=o_mask, other=0.0).to(tl.float32)
            ov = tl.load(out_base + (o64 * so_c)[:, None] + out_pix[None, :], mask=mask, other=0.0)
            g += (2.0 * gts)[:, None] * (ov.to(tl.float32) - sh[:, None])
        return tl.where(mask, g, 0.0)

    @triton.jit
    def _pixel_offsets(p64, WIDTH, s_h, s_w, FLAT: tl.constexpr):
        """Element offsets of the pixels ``p64`` (flat h * WIDTH + w) in a tensor of H / W strides s_h, s_w;
        ``FLAT``: s_h == WIDTH * s_w (or H == 1)."""
        if FLAT:
            return p64 * s_w
        ph = p64 // WIDTH
        return ph * s_h + (p64 - ph * WIDTH) * s_w

    @triton.jit
    def _grad_x_kernel(
        go_ptr,
        out_ptr,
        gt_ptr,
        gts_ptr,
        shift_ptr,
        w_ptr,
        gx_ptr,
        E,
        C_IN,
        C_OUT,
        WIDTH,
        HW,
        CI_BLKS,
        P_BLKS,
        GROUPS,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        so_e,
        so_n,
        so_c,
        so_p,
        st_e,
        st_c,
        sq_e,
        sq_c,
        sgx_e,
        sgx_n,
        sgx_c,
        sgx_p,
        SHARED: tl.constexpr,
        HAS_GRAD_OUT: tl.constexpr,
        HAS_TOTAL: tl.constexpr,
        HAS_TOTAL_SQ: tl.constexpr,
        FLAT: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_CI: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """Program ((n*P_BLKS + p_blk)*GROUPS + grp)*CI_BLKS + ci_blk: the grad x tile [BLOCK_CI, BLOCK_P]
        of (n) for a shared x (GROUPS = 1; the loop runs over all E edges) or of (e = grp, n) per edge:
        ``sum_e sum_o weight[e, o, ci] * g[e, n, o, p]``, ``g`` formed tile by tile (:func:`_grad_tile`)."""
        pid = tl.program_id(0)
        ci_blk = pid % CI_BLKS
        rest = pid // CI_BLKS
        grp = rest % GROUPS
        rest = rest // GROUPS
        p_blk = rest % P_BLKS
        n = rest // P_BLKS

        ci = ci_blk * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_mask = ci < C_IN
        p = p_blk * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < HW
        p64 = p.to(tl.int64)
        go_pix = _pixel_offsets(p64, WIDTH, sg_h, sg_w, FLAT)
        out_pix = p64 * so_p
        if SHARED:
            e_lo = 0
            e_hi = E
        else:
            e_lo = grp
            e_hi = grp + 1
        e_lo64 = tl.cast(e_lo, tl.int64)
        n64 = n.to(tl.int64)
        # Per-edge bases, advanced by one edge per iteration.
        go_base = go_ptr + e_lo64 * sg_e + n64 * sg_n
        out_base = out_ptr + e_lo64 * so_e + n64 * so_n
        gt_base = gt_ptr + e_lo64 * st_e
        gts_base = gts_ptr + e_lo64 * sq_e
        shift_base = shift_ptr + e_lo64 * C_OUT
        w_cols = w_ptr + e_lo64 * C_OUT * C_IN + ci[:, None]

        acc = tl.zeros([BLOCK_CI, BLOCK_P], dtype=tl.float32)
        for _ in range(e_lo, e_hi):
            for k0 in range(0, C_OUT, BLOCK_K):
                o = k0 + tl.arange(0, BLOCK_K)
                o_mask = o < C_OUT
                wt = tl.load(w_cols + o[None, :] * C_IN, mask=ci_mask[:, None] & o_mask[None, :], other=0.0)
                g = _grad_tile(
                    go_base, out_base, gt_base, gts_base, shift_base, o, o_mask, p_mask, go_pix, out_pix,
                    sg_c, so_c, st_c, sq_c,
                    HAS_GRAD_OUT, HAS_TOTAL, HAS_TOTAL_SQ, BLOCK_K, BLOCK_P,
                )  # fmt: skip
                if UPCAST:  # the interpreter's bf16 dot is wrong; fp32 operands are exact there
                    wt = wt.to(tl.float32)
                else:  # tensor cores in x's dtype (g rounded to it), fp32 accumulation
                    g = g.to(wt.dtype)
                if IEEE:  # noqa: SIM108 (a constexpr branch of the kernel)
                    acc = tl.dot(wt, g, acc=acc, input_precision="ieee")
                else:
                    acc = tl.dot(wt, g, acc=acc)
            go_base += sg_e
            out_base += so_e
            gt_base += st_e
            gts_base += sq_e
            shift_base += C_OUT
            w_cols += C_OUT * C_IN

        gx_off = (
            tl.cast(grp, tl.int64) * sgx_e
            + n64 * sgx_n
            + ci.to(tl.int64)[:, None] * sgx_c
            + (p64 * sgx_p)[None, :]
        )
        tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=ci_mask[:, None] & p_mask[None, :])

    @triton.jit
    def _grad_weight_kernel(
        go_ptr,
        out_ptr,
        gt_ptr,
        gts_ptr,
        shift_ptr,
        x_ptr,
        part_ptr,
        E,
        C_IN,
        C_OUT,
        WIDTH,
        HW,
        CO_BLKS,
        CI_BLKS,
        P_BLKS,
        TILES,
        CHUNK,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        so_e,
        so_n,
        so_c,
        so_p,
        st_e,
        st_c,
        sq_e,
        sq_c,
        sx_e,
        sx_n,
        sx_c,
        sx_h,
        sx_w,
        HAS_GRAD_OUT: tl.constexpr,
        HAS_TOTAL: tl.constexpr,
        HAS_TOTAL_SQ: tl.constexpr,
        FLAT: tl.constexpr,
        UPCAST: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_CO: tl.constexpr,
        BLOCK_CI: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        """Program ((e*CO_BLKS + co_blk)*CI_BLKS + ci_blk, s): the partial grad weight tile [BLOCK_CO,
        BLOCK_CI] of edge e over the pixel tiles [s*CHUNK, (s+1)*CHUNK) of the TILES = N*P_BLKS (sample,
        pixel block) tiles, ``sum g[e, n, co, p] * x_e[n, ci, p]``, stored to part[s, e] in part's dtype."""
        pid = tl.program_id(0)
        s = tl.program_id(1)
        ci_blk = pid % CI_BLKS
        rest = pid // CI_BLKS
        co_blk = rest % CO_BLKS
        e = rest // CO_BLKS

        co = co_blk * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_mask = co < C_OUT
        ci = ci_blk * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_mask = ci < C_IN
        e64 = e.to(tl.int64)
        go_edge = go_ptr + e64 * sg_e
        out_edge = out_ptr + e64 * so_e
        x_edge = x_ptr + e64 * sx_e
        x_ch = ci.to(tl.int64)[None, :] * sx_c
        gt_base = gt_ptr + e64 * st_e
        gts_base = gts_ptr + e64 * sq_e
        shift_base = shift_ptr + e64 * C_OUT

        acc = tl.zeros([BLOCK_CO, BLOCK_CI], dtype=tl.float32)
        t_lo = s * CHUNK
        t_hi = tl.minimum(t_lo + CHUNK, TILES)
        for t in range(t_lo, t_hi):
            n64 = tl.cast(t // P_BLKS, tl.int64)
            p = (t % P_BLKS) * BLOCK_P + tl.arange(0, BLOCK_P)
            p_mask = p < HW
            p64 = p.to(tl.int64)
            g = _grad_tile(
                go_edge + n64 * sg_n, out_edge + n64 * so_n, gt_base, gts_base, shift_base,
                co, co_mask, p_mask, _pixel_offsets(p64, WIDTH, sg_h, sg_w, FLAT), p64 * so_p,
                sg_c, so_c, st_c, sq_c,
                HAS_GRAD_OUT, HAS_TOTAL, HAS_TOTAL_SQ, BLOCK_CO, BLOCK_P,
            )  # fmt: skip
            xt = tl.load(
                x_edge + n64 * sx_n + _pixel_offsets(p64, WIDTH, sx_h, sx_w, FLAT)[:, None] + x_ch,
                mask=p_mask[:, None] & ci_mask[None, :],
                other=0.0,
            )
            if UPCAST:  # the interpreter's bf16 dot is wrong; fp32 operands are exact there
                xt = xt.to(tl.float32)
            else:  # tensor cores in x's dtype (g rounded to it), fp32 accumulation
                g = g.to(xt.dtype)
            if IEEE:  # noqa: SIM108 (a constexpr branch of the kernel)
                acc = tl.dot(g, xt, acc=acc, input_precision="ieee")
            else:
                acc = tl.dot(g, xt, acc=acc)

        part_off = ((s * E + e).to(tl.int64) * C_OUT + co.to(tl.int64)[:, None]) * C_IN + ci[None, :]
        tl.store(
            part_ptr + part_off, acc.to(part_ptr.dtype.element_ty), mask=co_mask[:, None] & ci_mask[None, :]
        )

    @triton.jit
    def _sum_partials_kernel(out_ptr, part_ptr, M, SPLITS, BLOCK: tl.constexpr):
        """out[m] = sum_s part[s, m] (fp32), stored in out's dtype; one program per BLOCK elements."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        ptrs = part_ptr + offs
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(0, SPLITS):
            acc += tl.load(ptrs, mask=mask, other=0.0)
            ptrs += M
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_forward(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton forward: ``x`` with any strides, ``weight`` contiguous; returns ``(out, total, total_sq,
    shift)``."""
    e, c_out, c_in = weight.shape
    x5 = x if x.dim() == 5 else x.unsqueeze(0).expand(e, *x.shape)  # stride 0 over edges: no copy
    _, n, _, h, w = x5.shape
    hw = h * w
    out = _empty((e, n, c_out, h, w), x.device, x.dtype, channels_last=_channels_last(x))
    # Two buffers zeroed by one foreach launch (a custom op's outputs may not alias each other, so not
    # views of one [2, E, C_out] buffer: torch.library checks it at run time).
    total = _empty((e, c_out), x.device, torch.float32)
    total_sq = _empty((e, c_out), x.device, torch.float32)
    torch._foreach_zero_([total, total_sq])
    shift = _empty((e, c_out), x.device, torch.float32)  # every (e, c) written by sample 0's first block
    if out.numel() == 0:
        return out, total, total_sq, shift.zero_()
    block_co, block_p, block_k = (
        _common.pow2_block(extent, _MIN_BLOCK, cap)
        for extent, cap in ((c_out, _MAX_BLOCK_CO), (hw, _MAX_BLOCK_P), (c_in, _MAX_BLOCK_K))
    )
    co_blks, p_blks = triton.cdiv(c_out, block_co), triton.cdiv(hw, block_p)
    programs = n * p_blks * e * co_blks
    if programs > _MAX_PROGRAMS:
        raise ValueError(
            f"pointwise_conv_stats: {programs} tiles exceed the grid limit; split the batch into parts."
        )
    sxe, sxn, sxc, sxh, sxw = x5.stride()
    soe, son, soc, _, sow = out.stride()
    _pointwise_conv_stats_kernel[(programs,)](
        x5,
        weight,
        out,
        total,
        total_sq,
        shift,
        e,
        c_in,
        c_out,
        w,
        hw,
        co_blks,
        p_blks,
        sxe,
        sxn,
        sxc,
        sxh,
        sxw,
        soe,
        son,
        soc,
        sow,
        FLAT_X=h == 1 or sxh == w * sxw,
        UPCAST=TRITON_INTERPRET,
        IEEE=x.dtype == torch.float32,
        BLOCK_CO=block_co,
        BLOCK_P=block_p,
        BLOCK_K=block_k,
    )
    return out, total, total_sq, shift


def _strides5(t: Tensor) -> tuple[int, int, int, int, int]:
    """(e, n, c, h, w) strides; 0 along e for a 4-D (shared) tensor."""
    s = tuple(t.stride())
    return (0, *s) if t.dim() == 4 else s  # type: ignore[return-value]


def _flat_pixels(t: Tensor) -> bool:
    """Whether pixel (h, w) of ``t`` lies at (h * W + w) * (W stride) (NCHW, channels-last, H == 1)."""
    h, w = t.shape[-2:]
    return h == 1 or t.stride(-2) == w * t.stride(-1)


def _num_splits(tiles: int, programs: int) -> int:
    """Chunks the N*H*W reduction of the weight gradient is split into (``tiles`` (sample, pixel block)
    tiles, ``programs`` = E * weight tiles; :func:`fastnas.kernels._common.num_splits`); 1 under the
    interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(tiles, programs, 1, _MAX_SPLITS)


def _launch_backward(
    grad_out: Tensor | None,
    grad_total: Tensor | None,
    grad_total_sq: Tensor | None,
    x: Tensor,
    weight: Tensor,
    out: Tensor,
    shift: Tensor,
    needs_grad_x: bool,
    needs_grad_weight: bool,
) -> tuple[Tensor, Tensor]:
    """Triton backward: ``(grad_x, grad_weight)`` (an empty tensor for one not needed); ``x``, ``out`` and
    ``grad_out`` are read through their strides, ``weight`` and ``shift`` contiguous."""
    e, c_out, c_in = weight.shape
    n, _, h, w = x.shape[-4:]
    hw = h * w
    shared = x.dim() == 4
    # Absent gradients: the kernels skip their terms (the pointer arguments are placeholders).
    go = out if grad_out is None else grad_out
    gt = shift if grad_total is None else grad_total
    gts = shift if grad_total_sq is None else grad_total_sq
    sg = _strides5(go)
    so_e, so_n, so_c, _, so_p = out.stride()
    st, sq = gt.stride(), gts.stride()
    flags = {
        "HAS_GRAD_OUT": grad_out is not None,
        "HAS_TOTAL": grad_total is not None,
        "HAS_TOTAL_SQ": grad_total_sq is not None,
        "FLAT": _flat_pixels(go) and _flat_pixels(x),
        "UPCAST": TRITON_INTERPRET,
        "IEEE": x.dtype == torch.float32,
    }

    grad_x = x.new_empty((0,))
    if needs_grad_x:
        grad_x = _empty(tuple(x.shape), x.device, x.dtype, channels_last=_channels_last(x))
        f32_ci, f32_p, f32_k = _F32_BLOCKS_GX if flags["IEEE"] else (_MAX_PROGRAMS,) * 3
        block_ci = _common.pow2_block(c_in, _MIN_BLOCK, min(_MAX_BLOCK_CO, f32_ci))
        block_p = _common.pow2_block(hw, _MIN_BLOCK, min(_MAX_BLOCK_P, f32_p))
        block_k = _common.pow2_block(c_out, _MIN_BLOCK, min(_MAX_BLOCK_K, f32_k))
        ci_blks, p_blks = triton.cdiv(c_in, block_ci), triton.cdiv(hw, block_p)
        groups = 1 if shared else e
        programs = n * p_blks * groups * ci_blks
        if programs > _MAX_PROGRAMS:
            raise ValueError(
                f"pointwise_conv_stats: {programs} tiles exceed the grid limit; split the batch into parts."
            )
        sgx = _strides5(grad_x)
        _grad_x_kernel[(programs,)](
            go, out, gt, gts, shift, weight, grad_x,
            e, c_in, c_out, w, hw, ci_blks, p_blks, groups,
            *sg, so_e, so_n, so_c, so_p, *st, *sq, sgx[0], sgx[1], sgx[2], sgx[4],
            SHARED=shared, **flags, BLOCK_CI=block_ci, BLOCK_P=block_p, BLOCK_K=block_k,
        )  # fmt: skip

    grad_weight = weight.new_empty((0,))
    if needs_grad_weight:
        grad_weight = _empty((e, c_out, c_in), x.device, weight.dtype)
        block_co = _common.pow2_block(c_out, _MIN_BLOCK, _MAX_BLOCK_GW)
        block_ci = _common.pow2_block(c_in, _MIN_BLOCK, _MAX_BLOCK_GW)
        block_p = _common.pow2_block(
            hw, _MIN_BLOCK, min(_MAX_BLOCK_R, _F32_BLOCK_R) if flags["IEEE"] else _MAX_BLOCK_R
        )
        co_blks, ci_blks = triton.cdiv(c_out, block_co), triton.cdiv(c_in, block_ci)
        p_blks = triton.cdiv(hw, block_p)
        tiles = n * p_blks
        programs = e * co_blks * ci_blks
        chunk, splits = _common.split_chunks(tiles, _num_splits(tiles, programs), 1)
        # One chunk: the kernel stores the gradient itself; else fp32 partials and one summing kernel.
        part = grad_weight if splits == 1 else _empty((splits, e, c_out, c_in), x.device, torch.float32)
        _grad_weight_kernel[(programs, splits)](
            go, out, gt, gts, shift, x, part,
            e, c_in, c_out, w, hw, co_blks, ci_blks, p_blks, tiles, chunk,
            *sg, so_e, so_n, so_c, so_p, *st, *sq, *_strides5(x),
            **flags, BLOCK_CO=block_co, BLOCK_CI=block_ci, BLOCK_P=block_p,
        )  # fmt: skip
        if splits > 1:
            m = e * c_out * c_in
            _sum_partials_kernel[(triton.cdiv(m, _BLOCK_SUM),)](
                grad_weight, part, m, splits, BLOCK=_BLOCK_SUM
            )
    return grad_x, grad_weight


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::pointwise_conv_stats", mutates_args=())
def _pointwise_conv_stats_op(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out, total, total_sq, shift)`` of the module docstring; Triton where :func:`triton_supports`, else
    PyTorch."""
    _check_args(x, weight)
    weight = weight.contiguous()
    if triton_supports(x.device, x.dtype):
        return _launch_forward(x, weight)
    return _torch_forward(x, weight)


@_pointwise_conv_stats_op.register_fake
def _pointwise_conv_stats_fake(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    shape = _out_shape(x, weight)
    out = _common.empty(shape, x.device, x.dtype, channels_last=_channels_last(x))
    e, _, c_out, _, _ = shape
    total, total_sq, shift = (x.new_empty((e, c_out), dtype=_common.acc_dtype(x.dtype)) for _ in range(3))
    return out, total, total_sq, shift


@torch.library.custom_op("fastnas::pointwise_conv_stats_backward", mutates_args=())
def _pointwise_conv_stats_backward_op(
    grad_out: Tensor | None, grad_total: Tensor | None, grad_total_sq: Tensor | None,  # of the outputs
    x: Tensor, weight: Tensor, out: Tensor, shift: Tensor,  # saved by the forward
    needs_grad_x: bool, needs_grad_weight: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(grad_x, grad_weight)``; an empty tensor for a gradient that is not needed. Triton where
    :func:`triton_supports` (and nothing is empty), else PyTorch."""
    if triton_supports(x.device, x.dtype) and x.numel() > 0 and out.numel() > 0:
        return _launch_backward(
            grad_out, grad_total, grad_total_sq, x, weight.contiguous(), out, shift.contiguous(),
            needs_grad_x, needs_grad_weight,
        )  # fmt: skip
    return _torch_backward(
        grad_out, grad_total, grad_total_sq, x, weight, out, shift, needs_grad_x, needs_grad_weight
    )


def _torch_backward(
    grad_out: Tensor | None, grad_total: Tensor | None, grad_total_sq: Tensor | None,
    x: Tensor, weight: Tensor, out: Tensor, shift: Tensor,
    needs_grad_x: bool, needs_grad_weight: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The backward in PyTorch: ``g`` elementwise, then two einsums."""
    acc = _common.acc_dtype(x.dtype)
    # GEMMs in x's dtype (tensor cores for bf16/fp16; the BLAS accumulates in fp32).
    g = _grad_of_out(grad_out, grad_total, grad_total_sq, out, shift, acc).to(x.dtype)
    weight = weight.to(x.dtype)
    shared = x.dim() == 4
    if needs_grad_x:
        eq = "eoi,enohw->nihw" if shared else "eoi,enohw->enihw"
        grad_x = _relayout(torch.einsum(eq, weight, g), _channels_last(x))
    else:
        grad_x = x.new_empty((0,))
    if needs_grad_weight:
        eq = "enohw,nihw->eoi" if shared else "enohw,enihw->eoi"
        grad_weight = torch.einsum(eq, g, x).contiguous()
    else:
        grad_weight = weight.new_empty((0,))
    return grad_x, grad_weight


@_pointwise_conv_stats_backward_op.register_fake
def _pointwise_conv_stats_backward_fake(
    grad_out: Tensor | None, grad_total: Tensor | None, grad_total_sq: Tensor | None,
    x: Tensor, weight: Tensor, out: Tensor, shift: Tensor,
    needs_grad_x: bool, needs_grad_weight: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    if needs_grad_x:
        grad_x = _common.empty(tuple(x.shape), x.device, x.dtype, channels_last=_channels_last(x))
    else:
        grad_x = x.new_empty((0,))
    grad_weight = weight.new_empty(weight.shape) if needs_grad_weight else weight.new_empty((0,))
    return grad_x, grad_weight


def _setup_context(ctx, inputs, output) -> None:
    x, weight = inputs
    out, _, _, shift = output
    ctx.mark_non_differentiable(shift)
    ctx.save_for_backward(x, weight, out, shift)
    ctx.nodes = (_common.grad_node(x), _common.grad_node(weight))
    # Unused outputs get None, not zeros (two fills saved where only ``out`` is used).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_total, grad_total_sq, _grad_shift):
    x, weight, out, shift = ctx.saved_tensors
    # a pass that wants some gradients only (DARTS' architecture step) skips the other kernel
    wanted = zip(ctx.needs_input_grad[:2], ctx.nodes, strict=True)
    needs_x, needs_w = (_common.grad_wanted(bool(n), node) for n, node in wanted)
    if not (needs_x or needs_w) or (grad_out is None and grad_total is None and grad_total_sq is None):
        return None, None
    grad_x, grad_weight = torch.ops.fastnas.pointwise_conv_stats_backward(
        grad_out, grad_total, grad_total_sq, x, weight, out, shift, needs_x, needs_w
    )
    return (grad_x if needs_x else None, grad_weight if needs_w else None)


_pointwise_conv_stats_op.register_autograd(_backward, setup_context=_setup_context)


def pointwise_conv_stats(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """1x1 convolutions of the E edges leaving one node, with the per-channel sums the following BN needs
    computed in the epilogue (the pointwise conv and BN of DARTS SepConv/DilConv).

    Args:
        x: [N, C_in, H, W], one input shared by all edges, or [E, N, C_in, H, W]; any strides (NCHW,
            channels-last, views) are read in place.
        weight: [E, C_out, C_in], one 1x1 kernel per edge, same dtype and device as ``x``.

    Returns:
        ``(out, total, total_sq, shift)``: ``out`` [E, N, C_out, H, W] in ``x``'s dtype (channels-last per
        edge when ``x`` is channels-last, else contiguous); ``total``/``total_sq`` [E, C_out], the sum and
        sum of squares over (N, H, W) of the stored ``out`` minus ``shift`` [E, C_out] (the conv output at
        sample 0's first pixel; not differentiable), float32 (float64 for float64 inputs). ``out``,
        ``total`` and ``total_sq`` are differentiable; pass all four to :func:`batch_norm_from_stats`.

    Uses the Triton operator when :func:`fastnas.kernels._common.use_kernels` accepts ``x``, else
    :func:`pointwise_conv_stats_reference`.
    """
    _check_args(x, weight)
    if _common.use_kernels(x):
        return torch.ops.fastnas.pointwise_conv_stats(x, weight)
    return pointwise_conv_stats_reference(x, weight)
