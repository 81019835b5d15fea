"""Mixed-op weighted sum with BatchNorm(affine=False) folded in: one edge of the DARTS search supernet
(Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019; batch normalization as in
Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", ICML 2015).

Every candidate op of a DARTS edge except ``none`` and the identity ends in ``BatchNorm2d(C, affine=False)``.
Given the stacked pre-BN outputs ``z`` [K, N, C, H, W] of those K ops, their weights ``w`` [K] and an
optional identity input ``x`` [N, C, H, W] with a scalar-tensor weight ``w_skip``, the op computes::

    out = sum_k w_k * (z_k - mean_k) / sqrt(var_k + eps) + w_skip * x

where ``mean_k``/``var_k`` [K, C] are the per-channel batch statistics over (N, H, W) (biased variance, as
BN in training mode), without writing the K normalised outputs. It returns ``(out, mean, var)``; the
statistics are not differentiable and feed :func:`update_running_stats`. Backward, with ``g = grad out``,
``zhat_k = (z_k - mean_k) * rstd_k`` recomputed from ``z`` and means over (N, H, W) per channel::

    grad z_k    = w_k * rstd_k * (g - mean(g) - zhat_k * mean(g * zhat_k))    (BN backward scaled by w_k)
    grad x      = w_skip * g
    grad w_k    = sum(g * zhat_k)
    grad w_skip = sum(g * x)

:func:`mixed_bn_sum` runs the operator ``torch.ops.fastnas.mixed_bn_sum`` (Triton; autograd through
``torch.ops.fastnas.mixed_bn_sum_backward``) where :func:`fastnas.kernels._common.use_kernels` allows (the
tensors are supported and the reference is not forced), else :func:`mixed_bn_sum_reference`
(``F.batch_norm`` and a weighted sum, autograd). Called on a device or dtype the kernels do not handle,
the operators compute the same formulas with PyTorch ops; both have fake implementations for
``torch.compile(fullgraph=True)``.

Dtypes: ``z`` and ``x`` share one dtype (float32, bfloat16, float16 on the kernels; float64 takes the
PyTorch math); ``w``/``w_skip`` may have another floating dtype. All math is float32 (float64 for float64);
``out``, grad z and grad x have the inputs' dtype, grad w/grad w_skip the weights' dtypes, the statistics
are float32 (float64). Inputs are made contiguous (NCHW). No double backward on the kernel path.

Kernels (fp32 accumulation):
- forward: ``_stats_partial_kernel``, grid (K*C, S), sums each (k, c) over S chunks of N*H*W, shifted by
  the channel's first element so the variance does not cancel when |mean| >> std; ``_forward_kernel``,
  grid (N*C, H*W blocks), turns the partials into mean/rstd and writes ``out`` for all K ops at once.
- backward: ``_backward_reduce_kernel``, grid (C, S), and ``_backward_finalize_kernel`` (one program) form
  sum(g), sum(g * zhat_k), grad w and grad w_skip; ``_backward_elementwise_kernel`` writes grad z, grad x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["mixed_bn_sum", "mixed_bn_sum_reference", "update_running_stats"]


_BLOCK_R = 1024  # reduction block of the stats kernel (1-D)
_BLOCK_R2 = 256  # reduction block of the backward reduction kernel ([BLOCK_K, BLOCK_R2] tiles)
_BLOCK_HW = 256  # elementwise block along H*W
_MAX_SPLITS = 64


# --------------------------------------------------------------------------------------------------
# Arguments, dtype rules, reference
# --------------------------------------------------------------------------------------------------


def _check_args(z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None) -> None:
    """Validate the arguments of :func:`mixed_bn_sum`; raises ``TypeError``/``ValueError``."""
    name = "mixed_bn_sum"
    if not isinstance(z, Tensor) or z.dim() != 5:
        raise _common.shape_error(name, "z", z, "a stacked [K, N, C, H, W] tensor")
    _common.check_float_dtype(name, "`z`", z.dtype)
    k, n, _, h, wd = z.shape
    if k < 1:
        raise ValueError(f"{name}: `z` holds no op outputs (K = 0).")
    if n * h * wd < 2:
        raise ValueError(
            f"{name}: batch statistics need more than 1 value per channel, got N*H*W = {n * h * wd}."
        )
    if not isinstance(w, Tensor) or w.dim() != 1 or w.shape[0] != k:
        raise _common.shape_error(name, "w", w, f"a 1-D tensor of K = {k} weights")
    _common.check_float_dtype(name, "`w`", w.dtype)
    _common.check_device_match(name, "`w`", w, "`z`", z)
    if (x is None) != (w_skip is None):
        raise ValueError(f"{name}: pass both `x` and `w_skip` for the identity input, or neither.")
    if x is not None and w_skip is not None:
        if x.shape != z.shape[1:]:
            raise ValueError(
                f"{name}: `x` must have the shape of one op output {tuple(z.shape[1:])}, "
                f"got {tuple(x.shape)}."
            )
        _common.check_dtype_match(name, "`x`", x, "`z`", z, "use one dtype")
        if w_skip.numel() != 1 or w_skip.dim() > 1:
            raise ValueError(f"{name}: `w_skip` must be a scalar tensor, got shape {tuple(w_skip.shape)}.")
        _common.check_float_dtype(name, "`w_skip`", w_skip.dtype)
        if x.device != z.device or w_skip.device != z.device:
            raise ValueError(f"{name}: `x` and `w_skip` must be on the device of `z` ({z.device}).")


def mixed_bn_sum_reference(
    z: Tensor, w: Tensor, x: Tensor | None = None, w_skip: Tensor | None = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Plain PyTorch reference: ``F.batch_norm`` (training, no affine, no running stats) per op, then the
    weighted sum. Autograd through it gives the reference gradients.

    Returns:
        ``(out, mean, var)``: ``out`` [N, C, H, W] in ``z``'s dtype; ``mean`` and the biased ``var``
        [K, C] in the accumulation dtype, detached.
    """
    _check_args(z, w, x, w_skip)
    acc = _common.acc_dtype(z.dtype)
    zf = z.to(acc)
    wf = w.to(acc)
    out = None
    for k in range(z.shape[0]):
        term = wf[k] * F.batch_norm(zf[k], None, None, None, None, training=True, momentum=0.0, eps=eps)
        out = term if out is None else out + term
    assert out is not None
    if x is not None and w_skip is not None:
        out = out + w_skip.to(acc).reshape(()) * x.to(acc)
    with torch.no_grad():
        mean = zf.mean(dim=(1, 3, 4))
        var = zf.var(dim=(1, 3, 4), correction=0)
    return out.to(z.dtype), mean, var


def update_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int, momentum: float = 0.1
) -> None:
    """In-place BN running-stat update from the returned batch statistics (as ``nn.BatchNorm2d`` does):
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased ``var * n / (n - 1)``,
    ``n = count = N*H*W``. No host synchronisation."""
    if count < 2:
        raise ValueError(f"update_running_stats: need count >= 2 values per channel, got {count}.")
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (used when the kernels cannot run on the tensors' device or dtype)
# --------------------------------------------------------------------------------------------------


def _torch_forward(
    z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        out, mean, var = mixed_bn_sum_reference(z, w, x, w_skip, eps)
    return out, mean, var


def _no_skip_grads(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_w_skip)`` without an identity input: empty tensors."""
    return z.new_empty((0,)), w.new_empty((0,))


def _torch_backward(
    grad_out: Tensor, z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    acc = _common.acc_dtype(z.dtype)
    m = z.shape[1] * z.shape[3] * z.shape[4]
    g = grad_out.to(acc)
    rstd = (var.to(acc) + eps).rsqrt()
    zhat = (z.to(acc) - mean.to(acc)[:, None, :, None, None]) * rstd[:, None, :, None, None]
    sum_g = g.sum(dim=(0, 2, 3))
    sum_gz = (g.unsqueeze(0) * zhat).sum(dim=(1, 3, 4))
    scale = (w.to(acc)[:, None] * rstd)[:, None, :, None, None]
    grad_z = scale * (
        g.unsqueeze(0) - (sum_g / m)[None, None, :, None, None] - zhat * (sum_gz / m)[:, None, :, None, None]
    )
    grad_w = sum_gz.sum(dim=1).to(w.dtype)
    if x is not None and w_skip is not None:
        grad_x = (w_skip.to(acc).reshape(()) * g).to(x.dtype)
        grad_ws = (g * x.to(acc)).sum().reshape(w_skip.shape).to(w_skip.dtype)
    else:
        grad_x, grad_ws = _no_skip_grads(z, w)
    return grad_z.to(z.dtype), grad_w, grad_x, grad_ws


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _row_block(K, C, HW, BLOCK_K: tl.constexpr, BLOCK_HW: tl.constexpr):
        """Program (n*C + c, block) of the elementwise kernels: ``c``, whether it is the first block of
        sample 0, the block's int64 offsets into [N, C, H*W] and their mask, the op indices ``ks`` and
        their mask."""
        row = tl.program_id(0)
        blk = tl.program_id(1)
        hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
        ks = tl.arange(0, BLOCK_K)
        return row % C, (row < C) & (blk == 0), row.to(tl.int64) * HW + hw, hw < HW, ks, ks < K

    @triton.jit
    def _saved_stats(mean_ptr, var_ptr, ks, kmask, c, C, eps):
        """``mean_k`` and ``rstd_k = 1 / sqrt(var_k + eps)`` of channel ``c`` for the ops ``ks`` ([K, C]
        statistics of the forward)."""
        mean = tl.load(mean_ptr + ks * C + c, mask=kmask, other=0.0)
        rstd = 1.0 / tl.sqrt(tl.load(var_ptr + ks * C + c, mask=kmask, other=0.0) + eps)
        return mean, rstd

    @triton.jit
    def _stats_partial_kernel(z_ptr, psum_ptr, psumsq_ptr, C, HW, M, CHUNK, KC, BLOCK: tl.constexpr):
        """Program (k*C + c, s): shifted sum and sum of squares of z[k, :, c] over reduction chunk s."""
        kc = tl.program_id(0)
        s = tl.program_id(1)
        k = kc // C
        c = kc - k * C
        # z[k, n, c, hw] lies at k*M*C + n*C*HW + c*HW + hw (M = N*HW).
        base = k.to(tl.int64) * M * C + c.to(tl.int64) * HW
        shift = tl.load(z_ptr + base).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        start = s * CHUNK
        for r0 in range(start, start + CHUNK, BLOCK):
            r = r0 + tl.arange(0, BLOCK)
            mask = r < M
            n = r // HW
            hw = r - n * HW
            v = tl.load(z_ptr + base + n.to(tl.int64) * C * HW + hw, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, v - shift, 0.0)
            acc += d
            acc2 += d * d
        tl.store(psum_ptr + s * KC + kc, tl.sum(acc, axis=0))
        tl.store(psumsq_ptr + s * KC + kc, tl.sum(acc2, axis=0))

    @triton.jit
    def _forward_kernel(
        z_ptr,
        w_ptr,
        x_ptr,
        wskip_ptr,
        psum_ptr,
        psumsq_ptr,
        out_ptr,
        mean_ptr,
        var_ptr,
        K,
        C,
        HW,
        M,
        SPLIT,
        eps,
        HAS_SKIP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):
        """Program (n*C + c, block): statistics of channel c for all k, then one block of out[n, c]."""
        c, first, roff, hmask, ks, kmask = _row_block(K, C, HW, BLOCK_K, BLOCK_HW)
        KC = K * C
        s1 = tl.zeros([BLOCK_K], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_K], dtype=tl.float32)
        for s in range(0, SPLIT):
            s1 += tl.load(psum_ptr + s * KC + ks * C + c, mask=kmask, other=0.0)
            s2 += tl.load(psumsq_ptr + s * KC + ks * C + c, mask=kmask, other=0.0)
        kbase = ks.to(tl.int64) * M * C
        shift = tl.load(z_ptr + kbase + c.to(tl.int64) * HW, mask=kmask, other=0.0).to(tl.float32)
        dm = s1 / M
        mean = shift + dm
        var = tl.maximum(s2 / M - dm * dm, 0.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        # the statistics of channel c are stored by one program: sample 0's first block
        tl.store(mean_ptr + ks * C + c, mean, mask=kmask & first)
        tl.store(var_ptr + ks * C + c, var, mask=kmask & first)

        a = tl.load(w_ptr + ks, mask=kmask, other=0.0).to(tl.float32) * rstd
        zt = tl.load(
            z_ptr + kbase[:, None] + roff[None, :], mask=kmask[:, None] & hmask[None, :], other=0.0
        ).to(tl.float32)
        acc = tl.sum(a[:, None] * (zt - mean[:, None]), axis=0)
        if HAS_SKIP:
            ws = tl.load(wskip_ptr).to(tl.float32)
            xv = tl.load(x_ptr + roff, mask=hmask, other=0.0).to(tl.float32)
            acc += ws * xv
        tl.store(out_ptr + roff, acc.to(out_ptr.dtype.element_ty), mask=hmask)

    @triton.jit
    def _backward_reduce_kernel(
        g_ptr,
        z_ptr,
        x_ptr,
        mean_ptr,
        var_ptr,
        part_g_ptr,
        part_gz_ptr,
        part_gx_ptr,
        K,
        C,
        HW,
        M,
        CHUNK,
        eps,
        HAS_SKIP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        """Program (c, s): partial sum(g), sum(g * zhat_k) for all k, sum(g * x) of channel c, chunk s."""
        c = tl.program_id(0)
        s = tl.program_id(1)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < K
        mean, rstd = _saved_stats(mean_ptr, var_ptr, ks, kmask, c, C, eps)
        kbase = ks.to(tl.int64) * M * C
        acc_g = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_gz = tl.zeros([BLOCK_K, BLOCK_R], dtype=tl.float32)
        start = s * CHUNK
        for r0 in range(start, start + CHUNK, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            rmask = r < M
            n = r // HW
            off = n.to(tl.int64) * C * HW + c.to(tl.int64) * HW + (r - n * HW)
            g = tl.load(g_ptr + off, mask=rmask, other=0.0).to(tl.float32)
            acc_g += g
            if HAS_SKIP:
                acc_gx += g * tl.load(x_ptr + off, mask=rmask, other=0.0).to(tl.float32)
            zt = tl.load(
                z_ptr + kbase[:, None] + off[None, :], mask=kmask[:, None] & rmask[None, :], other=0.0
            ).to(tl.float32)
            acc_gz += g[None, :] * ((zt - mean[:, None]) * rstd[:, None])
        tl.store(part_g_ptr + s * C + c, tl.sum(acc_g, axis=0))
        tl.store(part_gx_ptr + s * C + c, tl.sum(acc_gx, axis=0))
        tl.store(part_gz_ptr + s * K * C + ks * C + c, tl.sum(acc_gz, axis=1), mask=kmask)

    @triton.jit
    def _backward_finalize_kernel(
        part_g_ptr,
        part_gz_ptr,
        part_gx_ptr,
        sum_g_ptr,
        sum_gz_ptr,
        grad_w_ptr,
        grad_ws_ptr,
        K,
        C,
        SPLIT,
        HAS_SKIP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """One program: adds the chunk partials; grad w_k = sum_c sum(g * zhat_k), grad w_skip."""
        ks = tl.arange(0, BLOCK_K)
        cs = tl.arange(0, BLOCK_C)
        kmask = ks < K
        cmask = cs < C
        kc = ks[:, None] * C + cs[None, :]
        kcmask = kmask[:, None] & cmask[None, :]
        acc_g = tl.zeros([BLOCK_C], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_C], dtype=tl.float32)
        acc_gz = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
        for s in range(0, SPLIT):
            acc_g += tl.load(part_g_ptr + s * C + cs, mask=cmask, other=0.0)
            acc_gx += tl.load(part_gx_ptr + s * C + cs, mask=cmask, other=0.0)
            acc_gz += tl.load(part_gz_ptr + s * K * C + kc, mask=kcmask, other=0.0)
        tl.store(sum_g_ptr + cs, acc_g, mask=cmask)
        tl.store(sum_gz_ptr + kc, acc_gz, mask=kcmask)
        grad_w = tl.sum(acc_gz, axis=1)
        tl.store(grad_w_ptr + ks, grad_w.to(grad_w_ptr.dtype.element_ty), mask=kmask)
        if HAS_SKIP:
            tl.store(grad_ws_ptr, tl.sum(acc_gx, axis=0).to(grad_ws_ptr.dtype.element_ty))

    @triton.jit
    def _backward_elementwise_kernel(
        g_ptr,
        z_ptr,
        w_ptr,
        wskip_ptr,
        mean_ptr,
        var_ptr,
        sum_g_ptr,
        sum_gz_ptr,
        grad_z_ptr,
        grad_x_ptr,
        K,
        C,
        HW,
        M,
        eps,
        HAS_SKIP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):
        """Program (n*C + c, block): grad z[:, n, c] (BN backward scaled by w_k) and grad x[n, c]."""
        c, _, roff, hmask, ks, kmask = _row_block(K, C, HW, BLOCK_K, BLOCK_HW)
        mean, rstd = _saved_stats(mean_ptr, var_ptr, ks, kmask, c, C, eps)
        a = tl.load(w_ptr + ks, mask=kmask, other=0.0).to(tl.float32) * rstd
        mean_g = tl.load(sum_g_ptr + c) / M
        mean_gz = tl.load(sum_gz_ptr + ks * C + c, mask=kmask, other=0.0) / M
        g = tl.load(g_ptr + roff, mask=hmask, other=0.0).to(tl.float32)
        off2 = ks.to(tl.int64)[:, None] * M * C + roff[None, :]
        mask2 = kmask[:, None] & hmask[None, :]
        zt = tl.load(z_ptr + off2, mask=mask2, other=0.0).to(tl.float32)
        zhat = (zt - mean[:, None]) * rstd[:, None]
        gz = a[:, None] * (g[None, :] - mean_g - zhat * mean_gz[:, None])
        tl.store(grad_z_ptr + off2, gz.to(grad_z_ptr.dtype.element_ty), mask=mask2)
        if HAS_SKIP:
            ws = tl.load(wskip_ptr).to(tl.float32)
            tl.store(grad_x_ptr + roff, (ws * g).to(grad_x_ptr.dtype.element_ty), mask=hmask)


def _num_splits(m: int, programs: int) -> int:
    """Number of chunks the N*H*W reduction is split into (``programs`` = K*C or C;
    :func:`fastnas.kernels._common.num_splits`); 1 under the interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(m, programs, _BLOCK_R2, _MAX_SPLITS)


_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


def _launch_forward(
    z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward on contiguous inputs: returns ``(out, mean, var)``."""
    k, n, c, h, wd = z.shape
    hw, m = h * wd, n * h * wd
    kc = k * c
    chunk, splits = _common.split_chunks(m, _num_splits(m, kc), _BLOCK_R)
    psum = _empty((splits, kc), z.device, torch.float32)
    psumsq = _empty((splits, kc), z.device, torch.float32)
    _stats_partial_kernel[(kc, splits)](z, psum, psumsq, c, hw, m, chunk, kc, BLOCK=_BLOCK_R)
    out = _empty((n, c, h, wd), z.device, z.dtype)
    mean = _empty((k, c), z.device, torch.float32)
    var = _empty((k, c), z.device, torch.float32)
    has_skip = x is not None and w_skip is not None
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    grid = (n * c, triton.cdiv(hw, block_hw))
    _forward_kernel[grid](
        z,
        w,
        x if has_skip else z,
        w_skip if has_skip else w,
        psum,
        psumsq,
        out,
        mean,
        var,
        k,
        c,
        hw,
        m,
        splits,
        float(eps),
        HAS_SKIP=has_skip,
        BLOCK_K=_common.pow2_block(k, 2),
        BLOCK_HW=block_hw,
    )
    return out, mean, var


def _launch_backward(
    grad_out: Tensor, z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Triton backward on contiguous inputs: returns ``(grad_z, grad_w, grad_x, grad_w_skip)`` (the last
    two empty when there is no identity input)."""
    k, n, c, h, wd = z.shape
    hw, m = h * wd, n * h * wd
    dev = z.device
    has_skip = x is not None and w_skip is not None
    block_k = _common.pow2_block(k, 2)
    chunk, splits = _common.split_chunks(m, _num_splits(m, c), _BLOCK_R2)
    part_g = _empty((splits, c), dev, torch.float32)
    part_gx = _empty((splits, c), dev, torch.float32)
    part_gz = _empty((splits, k, c), dev, torch.float32)
    _backward_reduce_kernel[(c, splits)](
        grad_out,
        z,
        x if has_skip else z,
        mean,
        var,
        part_g,
        part_gz,
        part_gx,
        k,
        c,
        hw,
        m,
        chunk,
        float(eps),
        HAS_SKIP=has_skip,
        BLOCK_K=block_k,
        BLOCK_R=_BLOCK_R2,
    )
    sum_g = _empty((c,), dev, torch.float32)
    sum_gz = _empty((k, c), dev, torch.float32)
    grad_w = _empty((k,), dev, w.dtype)
    if x is not None and w_skip is not None:
        grad_x, grad_ws = _empty((n, c, h, wd), dev, z.dtype), _empty(tuple(w_skip.shape), dev, w_skip.dtype)
    else:
        grad_x, grad_ws = _no_skip_grads(z, w)
    _backward_finalize_kernel[(1,)](
        part_g,
        part_gz,
        part_gx,
        sum_g,
        sum_gz,
        grad_w,
        grad_ws if has_skip else grad_w,
        k,
        c,
        splits,
        HAS_SKIP=has_skip,
        BLOCK_K=block_k,
        BLOCK_C=_common.pow2_block(c, 2),
    )
    grad_z = _empty(tuple(z.shape), dev, z.dtype)
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    _backward_elementwise_kernel[(n * c, triton.cdiv(hw, block_hw))](
        grad_out,
        z,
        w,
        w_skip if has_skip else w,
        mean,
        var,
        sum_g,
        sum_gz,
        grad_z,
        grad_x if has_skip else grad_z,
        k,
        c,
        hw,
        m,
        float(eps),
        HAS_SKIP=has_skip,
        BLOCK_K=block_k,
        BLOCK_HW=block_hw,
    )
    return grad_z, grad_w, grad_x, grad_ws


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


def _contig(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


@torch.library.custom_op("fastnas::mixed_bn_sum", mutates_args=())
def _mixed_bn_sum_op(
    z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, mean, var)`` of the module docstring; Triton where :func:`triton_supports`, else PyTorch."""
    z, w, x, w_skip = z.contiguous(), w.contiguous(), _contig(x), _contig(w_skip)
    if triton_supports(z.device, z.dtype):
        return _launch_forward(z, w, x, w_skip, eps)
    return _torch_forward(z, w, x, w_skip, eps)


@_mixed_bn_sum_op.register_fake
def _mixed_bn_sum_fake(
    z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    k, n, c, h, wd = z.shape
    sd = _common.acc_dtype(z.dtype)
    return (
        z.new_empty((n, c, h, wd)),
        z.new_empty((k, c), dtype=sd),
        z.new_empty((k, c), dtype=sd),
    )


@torch.library.custom_op("fastnas::mixed_bn_sum_backward", mutates_args=())
def _mixed_bn_sum_backward_op(
    grad_out: Tensor, z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(grad_z, grad_w, grad_x, grad_w_skip)``; the last two are empty tensors without identity input."""
    grad_out, z, w = grad_out.contiguous(), z.contiguous(), w.contiguous()
    x, w_skip, mean, var = _contig(x), _contig(w_skip), mean.contiguous(), var.contiguous()
    if triton_supports(z.device, z.dtype) and mean.dtype == torch.float32 and var.dtype == torch.float32:
        return _launch_backward(grad_out.to(z.dtype), z, w, x, w_skip, mean, var, eps)
    return _torch_backward(grad_out, z, w, x, w_skip, mean, var, eps)


@_mixed_bn_sum_backward_op.register_fake
def _mixed_bn_sum_backward_fake(
    grad_out: Tensor, z: Tensor, w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    if x is not None and w_skip is not None:
        grad_x, grad_ws = torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_skip)
    else:
        grad_x, grad_ws = _no_skip_grads(z, w)
    return (
        torch.empty_like(z, memory_format=torch.contiguous_format),
        torch.empty_like(w, memory_format=torch.contiguous_format),
        grad_x,
        grad_ws,
    )


def _setup_context(ctx, inputs, output) -> None:
    z, w, x, w_skip, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(z, w, x, w_skip, mean, var)
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_out, _grad_mean, _grad_var):
    z, w, x, w_skip, mean, var = ctx.saved_tensors
    grad_z, grad_w, grad_x, grad_ws = torch.ops.fastnas.mixed_bn_sum_backward(
        grad_out, z, w, x, w_skip, mean, var, ctx.eps
    )
    has_skip = x is not None and w_skip is not None
    return (
        grad_z,
        grad_w,
        grad_x if has_skip else None,
        grad_ws if has_skip else None,
        None,
    )


_mixed_bn_sum_op.register_autograd(_backward, setup_context=_setup_context)


def mixed_bn_sum(
    z: Tensor, w: Tensor, x: Tensor | None = None, w_skip: Tensor | None = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_k w_k * BN(z_k) + w_skip * x`` with batch statistics, fused (every searched op but
    ``none``/identity ends in BN(affine=False)).

    Args:
        z: stacked pre-BN outputs [K, N, C, H, W] of the edge's K BN-terminated ops.
        w: [K] op weights (softmax over alpha, or masked weights); may differ in dtype from ``z``.
        x: optional identity input [N, C, H, W] (same dtype as ``z``), weighted by ``w_skip``.
        w_skip: scalar tensor weight of ``x``; given exactly when ``x`` is.
        eps: BN epsilon.

    Returns:
        ``(out, mean, var)``: ``out`` [N, C, H, W] in ``z``'s dtype; per-(k, c) batch ``mean`` and biased
        ``var`` [K, C] (float32; float64 for float64 inputs), not differentiable; pass them to
        :func:`update_running_stats` for BN's running statistics.

    Uses the Triton operator when :func:`fastnas.kernels._common.use_kernels` allows, else
    :func:`mixed_bn_sum_reference`.
    """
    _check_args(z, w, x, w_skip)
    if _common.use_kernels(z):
        return torch.ops.fastnas.mixed_bn_sum(z, w, x, w_skip, float(eps))
    return mixed_bn_sum_reference(z, w, x, w_skip, eps)
