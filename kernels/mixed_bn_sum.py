"""Mixed-op weighted sum with BatchNorm(affine=False) folded in: one edge of the DARTS search supernet
(Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019; batch normalization as in
Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", ICML 2015).

Every candidate op of a DARTS edge except ``none`` and the identity ends in ``BatchNorm2d(C, affine=False)``.
Given the pre-BN outputs ``z_k`` [N, C, H, W] of those K ops, their weights ``w`` [K] and an optional
identity input ``x`` [N, C, H, W] with a scalar-tensor weight ``w_skip``, the op computes::

    out = sum_k w_k * (z_k - mean_k) / sqrt(var_k + eps) + w_skip * x

where ``mean_k``/``var_k`` [K, C] are the per-channel batch statistics over (N, H, W) (biased variance, as
BN in training mode), without writing the K normalised outputs. It returns ``(out, mean, var)``; the
statistics are not differentiable and feed :func:`update_running_stats`. Backward, with ``g = grad out``,
``zhat_k = (z_k - mean_k) * rstd_k`` recomputed from ``z`` and means over (N, H, W) per channel::

    grad z_k    = w_k * rstd_k * (g - mean(g) - zhat_k * mean(g * zhat_k))    (BN backward scaled by w_k)
    grad x      = w_skip * g
    grad w_k    = sum(g * zhat_k)
    grad w_skip = sum(g * x)

The K terms come either as a sequence of K tensors [N, C, H, W] (each its own tensor or a view, e.g.
``batched[e]`` of an [E, N, C, H, W] tensor, NCHW or channels-last: read in place, no stack and no copy;
each gets its own gradient tensor) or, as before, stacked in one [K, N, C, H, W] tensor (its gradient is
one [K, N, C, H, W] tensor).

:func:`mixed_bn_sum` runs the operator ``torch.ops.fastnas.mixed_bn_sum`` (Triton; autograd through
``torch.ops.fastnas.mixed_bn_sum_backward``) where :func:`fastnas.kernels._common.use_kernels` allows (the
tensors are supported and the reference is not forced), else :func:`mixed_bn_sum_reference`
(``F.batch_norm`` and a weighted sum, autograd). Both operators take the terms as ``Tensor[]``: the K terms,
or a one-element list holding the stacked tensor. Called on a device or dtype the kernels do not handle, the
operators compute the same formulas with PyTorch ops; both have fake implementations for
``torch.compile(fullgraph=True)``. The autograd registration does not materialise the (always absent)
gradients of ``mean``/``var``, and a missing gradient of ``out`` gives no gradients at all.

Dtypes: the terms and ``x`` share one dtype (float32, bfloat16, float16 on the kernels; float64 takes the
PyTorch math); ``w``/``w_skip`` may have another floating dtype. All math is float32 (float64 for float64);
``out``, grad z and grad x have the inputs' dtype, grad w/grad w_skip the weights' dtypes, the statistics
are float32 (float64). ``out``, grad x and the grads of the terms are contiguous (NCHW).

Layouts on the kernel path: every term, ``x`` and the incoming gradient ``g`` are read in place through
their own strides (sample, channel, and one stride over the H*W plane): any tensor whose H and W dimensions
merge into one (``stride(H) == W * stride(W)``: NCHW-contiguous tensors and views of them such as
``batched[e]`` or a channel slice, channels-last tensors, expanded gradients) is read without a copy; only a
tensor whose plane does not merge is copied (contiguous) first, that tensor alone. ``w`` may be a strided
view. No double backward on the kernel path.

Kernels (fp32 accumulation). The terms are pointer arguments ``z0..z7`` with their strides (at most
:data:`MAX_TERMS_PER_LAUNCH` per launch, constexpr ``NUM_TERMS``; K > 8 runs the term kernels once per chunk
of 8, so K <= 8 launches 2 kernels forward and 3 backward):
- forward: ``_stats_partial_kernel``, grid (C, S), sums each term's channel c over S chunks of N*H*W, shifted
  by the channel's first element so the variance does not cancel when |mean| >> std;
  ``_forward_kernel``, grid (N*C, H*W blocks), turns the partials into mean/rstd and writes ``out`` for all
  terms of the launch at once (later chunks add to an fp32 partial sum; ``out`` itself for fp32).
- backward: ``_backward_reduce_kernel``, grid (C, S), and ``_backward_finalize_kernel`` (one program) form
  sum(g), sum(g * zhat_k), grad w and grad w_skip; ``_backward_elementwise_kernel`` writes grad z, grad x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["MAX_TERMS_PER_LAUNCH", "mixed_bn_sum", "mixed_bn_sum_reference", "update_running_stats"]


MAX_TERMS_PER_LAUNCH = 8  # pointer arguments z0..z7 of the term kernels
_BLOCK_R = 256  # reduction block of the statistics kernel ([BLOCK_K, BLOCK_R] accumulators)
_BLOCK_R2 = 256  # reduction block of the backward reduction kernel ([BLOCK_K, BLOCK_R2] tiles)
_BLOCK_HW = 256  # elementwise block along H*W
_MAX_SPLITS = 64

Terms = Tensor | Sequence[Tensor]
"""The K pre-BN outputs: one stacked [K, N, C, H, W] tensor, or K tensors [N, C, H, W]."""


# --------------------------------------------------------------------------------------------------
# Arguments, dtype rules, reference
# --------------------------------------------------------------------------------------------------


def _terms_of(z: Terms) -> list[Tensor]:
    """The K terms [N, C, H, W] of ``z`` (views of a stacked tensor), checked for one shape, dtype and
    device; raises ``TypeError``/``ValueError``."""
    name = "mixed_bn_sum"
    expected = "a stacked [K, N, C, H, W] tensor or a sequence of K tensors [N, C, H, W]"
    if isinstance(z, Tensor):
        if z.dim() != 5:
            raise _common.shape_error(name, "z", z, expected)
        _common.check_float_dtype(name, "`z`", z.dtype)
        return list(z.unbind(0))
    if not isinstance(z, Sequence):
        raise _common.shape_error(name, "z", z, expected)
    terms = list(z)
    for k, t in enumerate(terms):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise _common.shape_error(name, f"z[{k}]", t, f"a tensor [N, C, H, W] ({expected})")
    if terms:
        z0 = terms[0]
        _common.check_float_dtype(name, "`z`", z0.dtype)
        for k, t in enumerate(terms[1:], start=1):
            label = f"z[{k}]"
            _common.check_shape_match(name, label, t, "z[0]", z0, "all op outputs of an edge have one shape")
            _common.check_dtype_match(name, label, t, "z[0]", z0, "use one dtype")
            _common.check_device_match(name, label, t, "z[0]", z0)
    return terms


def _check_args(z: Terms, w: Tensor, x: Tensor | None, w_skip: Tensor | None) -> list[Tensor]:
    """Validate the arguments of :func:`mixed_bn_sum`; returns the terms (:func:`_terms_of`). Raises
    ``TypeError``/``ValueError``."""
    name = "mixed_bn_sum"
    terms = _terms_of(z)
    k = len(terms)
    if k < 1:
        raise ValueError(f"{name}: `z` holds no op outputs (K = 0).")
    z0 = terms[0]
    n, _, h, wd = z0.shape
    if n * h * wd < 2:
        raise ValueError(
            f"{name}: batch statistics need more than 1 value per channel, got N*H*W = {n * h * wd}."
        )
    if not isinstance(w, Tensor) or w.dim() != 1 or w.shape[0] != k:
        raise _common.shape_error(name, "w", w, f"a 1-D tensor of K = {k} weights")
    _common.check_float_dtype(name, "`w`", w.dtype)
    _common.check_device_match(name, "`w`", w, "`z`", z0)
    if (x is None) != (w_skip is None):
        raise ValueError(f"{name}: pass both `x` and `w_skip` for the identity input, or neither.")
    if x is not None and w_skip is not None:
        if x.shape != z0.shape:
            raise ValueError(
                f"{name}: `x` must have the shape of one op output {tuple(z0.shape)}, got {tuple(x.shape)}."
            )
        _common.check_dtype_match(name, "`x`", x, "`z`", z0, "use one dtype")
        if w_skip.numel() != 1 or w_skip.dim() > 1:
            raise ValueError(f"{name}: `w_skip` must be a scalar tensor, got shape {tuple(w_skip.shape)}.")
        _common.check_float_dtype(name, "`w_skip`", w_skip.dtype)
        if x.device != z0.device or w_skip.device != z0.device:
            raise ValueError(f"{name}: `x` and `w_skip` must be on the device of `z` ({z0.device}).")
    return terms


def mixed_bn_sum_reference(
    z: Terms, w: Tensor, x: Tensor | None = None, w_skip: Tensor | None = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Plain PyTorch reference: ``F.batch_norm`` (training, no affine, no running stats) per op, then the
    weighted sum. Autograd through it gives the reference gradients (of the stacked tensor, or of each
    term). ``z``: as in :func:`mixed_bn_sum`.

    Returns:
        ``(out, mean, var)``: ``out`` [N, C, H, W] in the terms' dtype; ``mean`` and the biased ``var``
        [K, C] in the accumulation dtype, detached.
    """
    terms = _check_args(z, w, x, w_skip)
    dtype = terms[0].dtype
    acc = _common.acc_dtype(dtype)
    wf = w.to(acc)
    out = None
    means, variances = [], []
    for k, term in enumerate(terms):
        zf = term.to(acc)
        bn = wf[k] * F.batch_norm(zf, None, None, None, None, training=True, momentum=0.0, eps=eps)
        out = bn if out is None else out + bn
        with torch.no_grad():
            means.append(zf.mean(dim=(0, 2, 3)))
            variances.append(zf.var(dim=(0, 2, 3), correction=0))
    assert out is not None
    if x is not None and w_skip is not None:
        out = out + w_skip.to(acc).reshape(()) * x.to(acc)
    return out.to(dtype), torch.stack(means), torch.stack(variances)


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
# The operators' term lists: K tensors [N, C, H, W], or [z] with z stacked [K, N, C, H, W]
# --------------------------------------------------------------------------------------------------


def _is_stacked(z: Sequence[Tensor]) -> bool:
    """Whether the operator's ``z`` is ``[stacked]`` (one [K, N, C, H, W] tensor) rather than K terms."""
    return len(z) == 1 and z[0].dim() == 5


def _unstack(z: Sequence[Tensor]) -> list[Tensor]:
    """The K terms [N, C, H, W] of the operator's ``z`` (views of a stacked tensor, no copy)."""
    return list(z[0].unbind(0)) if _is_stacked(z) else list(z)


def _grad_buffers(z: Sequence[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
    """``(returned, targets)``: the operator's gradients for ``z`` (one contiguous [K, N, C, H, W] tensor
    for a stacked ``z``, else one contiguous tensor per term) and the K [N, C, H, W] tensors the kernels
    write (the same tensors, or the stacked gradient's views)."""
    if _is_stacked(z):
        stacked = _empty(tuple(z[0].shape), z[0].device, dtype)
        return [stacked], list(stacked.unbind(0))
    grads = [_empty(tuple(t.shape), t.device, dtype) for t in z]
    return grads, grads


def _plane(t: Tensor) -> tuple[Tensor, int, int, int]:
    """``(t, stride N, stride C, stride over H*W)`` of a [N, C, H, W] tensor whose H and W merge into one
    strided dimension (read in place); a contiguous copy when they do not."""
    _, _, h, wd = t.shape
    sn, sc, sh, sw = t.stride()
    if wd == 1:
        return t, sn, sc, sh
    if h == 1 or sh == wd * sw:
        return t, sn, sc, sw
    t = t.contiguous()
    sn, sc, _, sw = t.stride()
    return t, sn, sc, sw


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (used when the kernels cannot run on the tensors' device or dtype)
# --------------------------------------------------------------------------------------------------


def _torch_forward(
    terms: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        out, mean, var = mixed_bn_sum_reference(terms, w, x, w_skip, eps)
    return out.contiguous(), mean, var


def _no_skip_grads(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_w_skip)`` without an identity input: empty tensors."""
    return z.new_empty((0,)), w.new_empty((0,))


def _torch_backward(
    grad_out: Tensor, terms: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float, targets: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Writes grad z_k into ``targets[k]``; returns ``(grad_w, grad_x, grad_w_skip)``."""
    z0 = terms[0]
    acc = _common.acc_dtype(z0.dtype)
    m = z0.shape[0] * z0.shape[2] * z0.shape[3]
    g = grad_out.to(acc)
    sum_g = g.sum(dim=(0, 2, 3))
    rstd = (var.to(acc) + eps).rsqrt()
    wf = w.to(acc)
    grad_w = []
    for k, term in enumerate(terms):
        zhat = (term.to(acc) - mean[k].to(acc)[None, :, None, None]) * rstd[k][None, :, None, None]
        sum_gz = (g * zhat).sum(dim=(0, 2, 3))
        scale = (wf[k] * rstd[k])[None, :, None, None]
        grad = scale * (g - (sum_g / m)[None, :, None, None] - zhat * (sum_gz / m)[None, :, None, None])
        targets[k].copy_(grad)
        grad_w.append(sum_gz.sum())
    if x is not None and w_skip is not None:
        grad_x = (w_skip.to(acc).reshape(()) * g).to(x.dtype).contiguous()
        grad_ws = (g * x.to(acc)).sum().reshape(w_skip.shape).to(w_skip.dtype)
    else:
        grad_x, grad_ws = _no_skip_grads(z0, w)
    return torch.stack(grad_w).to(w.dtype), grad_x, grad_ws


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _pick(t: tl.constexpr, p0, p1, p2, p3, p4, p5, p6, p7):
        """Argument ``p_t`` for a compile-time ``t`` (resolved at compile time, no runtime select)."""
        return (p0, p1, p2, p3, p4, p5, p6, p7)[t]

    @triton.jit
    def _term(
        t: tl.constexpr,
        z0, z1, z2, z3, z4, z5, z6, z7,
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7,
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
    ):  # fmt: skip
        """Term ``t`` of the launch: its pointer and its strides over N, C and the H*W plane."""
        return (
            _pick(t, z0, z1, z2, z3, z4, z5, z6, z7),
            _pick(t, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7),
            _pick(t, zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7),
            _pick(t, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7),
        )

    @triton.jit
    def _at(v, ks, t: tl.constexpr):
        """Entry ``t`` of the small vector ``v`` (indices ``ks``) as a scalar."""
        return tl.sum(tl.where(ks == t, v, 0.0), axis=0)

    @triton.jit
    def _row_block(C, HW, BLOCK_HW: tl.constexpr):
        """Program (n*C + c, block) of the elementwise kernels: ``n``, ``c``, whether it is the first block
        of sample 0, the block's positions ``hw`` in the H*W plane, their int64 offsets into a contiguous
        [N, C, H*W] tensor and their mask."""
        row = tl.program_id(0)
        blk = tl.program_id(1)
        hw = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)
        n = row // C
        return n, row - n * C, (row < C) & (blk == 0), hw, row.to(tl.int64) * HW + hw, hw < HW

    @triton.jit
    def _stats_partial_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7,  # the launch's terms (unused slots: any tensor)
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,  # their strides over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,  # over the H*W plane
        psum_ptr,
        psumsq_ptr,
        C,
        HW,
        M,
        CHUNK,
        KC,
        K0,
        NUM_TERMS: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Program (c, s): shifted sum and sum of squares of every term's channel c over reduction chunk s
        (into [S, K, C] at the terms K0 + t)."""
        c = tl.program_id(0)
        s = tl.program_id(1)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < NUM_TERMS
        # each term's channel is shifted by its first element (z_t[0, c, 0, 0])
        shift = tl.zeros([BLOCK_K], dtype=tl.float32)
        for t in tl.static_range(NUM_TERMS):
            zp, sn, sc, sh = _term(
                t, z0, z1, z2, z3, z4, z5, z6, z7, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
                zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
            )  # fmt: skip
            shift = tl.where(ks == t, tl.load(zp + c.to(tl.int64) * sc).to(tl.float32), shift)
        acc = tl.zeros([BLOCK_K, BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_K, BLOCK], dtype=tl.float32)
        start = s * CHUNK
        for r0 in range(start, start + CHUNK, BLOCK):
            r = r0 + tl.arange(0, BLOCK)
            mask = r < M
            n = (r // HW).to(tl.int64)
            hw = r.to(tl.int64) - n * HW
            for t in tl.static_range(NUM_TERMS):
                zp, sn, sc, sh = _term(
                    t, z0, z1, z2, z3, z4, z5, z6, z7, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
                    zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
                )  # fmt: skip
                v = tl.load(zp + c.to(tl.int64) * sc + n * sn + hw * sh, mask=mask, other=0.0)
                d = tl.where(mask, v.to(tl.float32) - _at(shift, ks, t), 0.0)
                acc += tl.where(ks[:, None] == t, d[None, :], 0.0)
                acc2 += tl.where(ks[:, None] == t, (d * d)[None, :], 0.0)
        out = s * KC + (K0 + ks) * C + c
        tl.store(psum_ptr + out, tl.sum(acc, axis=1), mask=kmask)
        tl.store(psumsq_ptr + out, tl.sum(acc2, axis=1), mask=kmask)

    @triton.jit
    def _forward_kernel(
        z0, z1, z2, z3, z4, z5, z6, z7,  # the launch's terms (unused slots: any tensor)
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,  # their strides over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,  # over the H*W plane
        w_ptr,
        x_ptr,
        wskip_ptr,
        psum_ptr,
        psumsq_ptr,
        prev_ptr,
        out_ptr,
        mean_ptr,
        var_ptr,
        C,
        HW,
        M,
        KC,
        K0,
        SPLIT,
        W_STRIDE,
        XN,
        XC,
        XH,
        eps,
        NUM_TERMS: tl.constexpr,
        HAS_SKIP: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):  # fmt: skip
        """Program (n*C + c, block): statistics of channel c for the launch's terms, then one block of
        out[n, c] (plus ``prev`` when ACCUMULATE: the partial sum of the earlier terms)."""
        n, c, first, hw, roff, hmask = _row_block(C, HW, BLOCK_HW)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < NUM_TERMS
        kc = (K0 + ks) * C + c
        s1 = tl.zeros([BLOCK_K], dtype=tl.float32)
        s2 = tl.zeros([BLOCK_K], dtype=tl.float32)
        for s in range(0, SPLIT):
            s1 += tl.load(psum_ptr + s * KC + kc, mask=kmask, other=0.0)
            s2 += tl.load(psumsq_ptr + s * KC + kc, mask=kmask, other=0.0)
        dm = s1 / M
        var = tl.maximum(s2 / M - dm * dm, 0.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        a = tl.load(w_ptr + (K0 + ks) * W_STRIDE, mask=kmask, other=0.0).to(tl.float32) * rstd
        n64 = n.to(tl.int64)
        c64 = c.to(tl.int64)
        hw64 = hw.to(tl.int64)
        if ACCUMULATE:
            acc = tl.load(prev_ptr + roff, mask=hmask, other=0.0).to(tl.float32)
        else:
            acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
        mean = tl.zeros([BLOCK_K], dtype=tl.float32)
        for t in tl.static_range(NUM_TERMS):
            zp, sn, sc, sh = _term(
                t, z0, z1, z2, z3, z4, z5, z6, z7, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
                zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
            )  # fmt: skip
            # mean = shift + mean of the shifted values; the shift is the channel's first element
            mean_t = tl.load(zp + c64 * sc).to(tl.float32) + _at(dm, ks, t)
            mean = tl.where(ks == t, mean_t, mean)
            zv = tl.load(zp + n64 * sn + c64 * sc + hw64 * sh, mask=hmask, other=0.0).to(tl.float32)
            acc += _at(a, ks, t) * (zv - mean_t)
        # the statistics of channel c are stored by one program: sample 0's first block
        tl.store(mean_ptr + kc, mean, mask=kmask & first)
        tl.store(var_ptr + kc, var, mask=kmask & first)
        if HAS_SKIP:
            ws = tl.load(wskip_ptr).to(tl.float32)
            xv = tl.load(x_ptr + n64 * XN + c64 * XC + hw64 * XH, mask=hmask, other=0.0).to(tl.float32)
            acc += ws * xv
        tl.store(out_ptr + roff, acc.to(out_ptr.dtype.element_ty), mask=hmask)

    @triton.jit
    def _backward_reduce_kernel(
        g_ptr,
        z0, z1, z2, z3, z4, z5, z6, z7,  # the launch's terms (unused slots: any tensor)
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,  # their strides over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,  # over the H*W plane
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
        K0,
        GN,
        GC,
        GH,
        XN,
        XC,
        XH,
        eps,
        NUM_TERMS: tl.constexpr,
        FIRST: tl.constexpr,
        HAS_SKIP: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        """Program (c, s): partial sum(g * zhat_k) of channel c over chunk s for the launch's terms; the
        FIRST launch also sum(g) and sum(g * x)."""
        c = tl.program_id(0)
        s = tl.program_id(1)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < NUM_TERMS
        kc = (K0 + ks) * C + c
        mean = tl.load(mean_ptr + kc, mask=kmask, other=0.0)
        rstd = 1.0 / tl.sqrt(tl.load(var_ptr + kc, mask=kmask, other=0.0) + eps)
        c64 = c.to(tl.int64)
        acc_g = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_R], dtype=tl.float32)
        acc_gz = tl.zeros([BLOCK_K, BLOCK_R], dtype=tl.float32)
        start = s * CHUNK
        for r0 in range(start, start + CHUNK, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            rmask = r < M
            n = (r // HW).to(tl.int64)
            hw = r.to(tl.int64) - n * HW
            g = tl.load(g_ptr + n * GN + c64 * GC + hw * GH, mask=rmask, other=0.0).to(tl.float32)
            if FIRST:
                acc_g += g
                if HAS_SKIP:
                    xv = tl.load(x_ptr + n * XN + c64 * XC + hw * XH, mask=rmask, other=0.0)
                    acc_gx += g * xv.to(tl.float32)
            for t in tl.static_range(NUM_TERMS):
                zp, sn, sc, sh = _term(
                    t, z0, z1, z2, z3, z4, z5, z6, z7, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
                    zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
                )  # fmt: skip
                v = tl.load(zp + c64 * sc + n * sn + hw * sh, mask=rmask, other=0.0).to(tl.float32)
                # masked-off positions have g = 0: no contribution
                gz = g * ((v - _at(mean, ks, t)) * _at(rstd, ks, t))
                acc_gz += tl.where(ks[:, None] == t, gz[None, :], 0.0)
        if FIRST:
            tl.store(part_g_ptr + s * C + c, tl.sum(acc_g, axis=0))
            tl.store(part_gx_ptr + s * C + c, tl.sum(acc_gx, axis=0))
        tl.store(part_gz_ptr + s * K * C + kc, tl.sum(acc_gz, axis=1), mask=kmask)

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
        z0, z1, z2, z3, z4, z5, z6, z7,  # the launch's terms (unused slots: any tensor)
        zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,  # their strides over N
        zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7,  # over C
        zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,  # over the H*W plane
        gz0, gz1, gz2, gz3, gz4, gz5, gz6, gz7,  # their gradients (contiguous)
        w_ptr,
        wskip_ptr,
        mean_ptr,
        var_ptr,
        sum_g_ptr,
        sum_gz_ptr,
        grad_x_ptr,
        C,
        HW,
        M,
        K0,
        W_STRIDE,
        GN,
        GC,
        GH,
        eps,
        NUM_TERMS: tl.constexpr,
        HAS_SKIP: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):  # fmt: skip
        """Program (n*C + c, block): grad z_t[n, c] of the launch's terms (BN backward scaled by w) and
        grad x[n, c] (when HAS_SKIP)."""
        n, c, _, hw, roff, hmask = _row_block(C, HW, BLOCK_HW)
        n64 = n.to(tl.int64)
        c64 = c.to(tl.int64)
        hw64 = hw.to(tl.int64)
        mean_g = tl.load(sum_g_ptr + c) / M
        g = tl.load(g_ptr + n64 * GN + c64 * GC + hw64 * GH, mask=hmask, other=0.0).to(tl.float32)
        gc = g - mean_g
        for t in tl.static_range(NUM_TERMS):
            zp, sn, sc, sh = _term(
                t, z0, z1, z2, z3, z4, z5, z6, z7, zn0, zn1, zn2, zn3, zn4, zn5, zn6, zn7,
                zc0, zc1, zc2, zc3, zc4, zc5, zc6, zc7, zh0, zh1, zh2, zh3, zh4, zh5, zh6, zh7,
            )  # fmt: skip
            gzp = _pick(t, gz0, gz1, gz2, gz3, gz4, gz5, gz6, gz7)
            kc = (K0 + t) * C + c
            mean = tl.load(mean_ptr + kc)
            rstd = 1.0 / tl.sqrt(tl.load(var_ptr + kc) + eps)
            a = tl.load(w_ptr + (K0 + t) * W_STRIDE).to(tl.float32) * rstd
            mean_gz = tl.load(sum_gz_ptr + kc) / M
            zv = tl.load(zp + n64 * sn + c64 * sc + hw64 * sh, mask=hmask, other=0.0).to(tl.float32)
            gz = a * (gc - ((zv - mean) * rstd) * mean_gz)
            tl.store(gzp + roff, gz.to(gzp.dtype.element_ty), mask=hmask)
        if HAS_SKIP:
            ws = tl.load(wskip_ptr).to(tl.float32)
            tl.store(grad_x_ptr + roff, (ws * g).to(grad_x_ptr.dtype.element_ty), mask=hmask)


def _num_splits(m: int, programs: int) -> int:
    """Number of chunks the N*H*W reduction is split into (``programs`` = C, the programs of one split;
    :func:`fastnas.kernels._common.num_splits`); 1 under the interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(m, programs, _BLOCK_R2, _MAX_SPLITS)


_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


def _chunks(num_terms: int) -> list[tuple[int, int]]:
    """``(start, count)`` of the term launches: at most :data:`MAX_TERMS_PER_LAUNCH` terms each."""
    step = MAX_TERMS_PER_LAUNCH
    return [(s, min(step, num_terms - s)) for s in range(0, num_terms, step)]


def _term_args(planes: list[tuple[Tensor, int, int, int]]) -> list[Tensor | int]:
    """The term arguments ``z0..z7, zn0..zn7, zc0..zc7, zh0..zh7`` of one launch (unused slots repeat the
    first term)."""
    padded = planes + [planes[0]] * (MAX_TERMS_PER_LAUNCH - len(planes))
    return [p[i] for i in range(4) for p in padded]


def _pad(ptrs: list[Tensor]) -> list[Tensor]:
    return ptrs + [ptrs[0]] * (MAX_TERMS_PER_LAUNCH - len(ptrs))


def _launch_forward(
    terms: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward on the terms as they are (strided, :func:`_plane`): returns ``(out, mean, var)``."""
    z0 = terms[0]
    k = len(terms)
    n, c, h, wd = z0.shape
    hw, m = h * wd, n * h * wd
    dev = z0.device
    planes = [_plane(t) for t in terms]
    chunks = _chunks(k)
    chunk, splits = _common.split_chunks(m, _num_splits(m, c), _BLOCK_R)
    psum = _empty((splits, k, c), dev, torch.float32)
    psumsq = _empty((splits, k, c), dev, torch.float32)
    block_k = _common.pow2_block(min(k, MAX_TERMS_PER_LAUNCH), 2)
    for start, count in chunks:
        _stats_partial_kernel[(c, splits)](
            *_term_args(planes[start : start + count]),
            psum,
            psumsq,
            c,
            hw,
            m,
            chunk,
            k * c,
            start,
            NUM_TERMS=count,
            BLOCK_K=block_k,
            BLOCK=_BLOCK_R,
        )
    out = _empty((n, c, h, wd), dev, z0.dtype)
    mean = _empty((k, c), dev, torch.float32)
    var = _empty((k, c), dev, torch.float32)
    has_skip = x is not None and w_skip is not None
    xp = _plane(x) if x is not None and w_skip is not None else planes[0]
    # Partial sums between chunks: in `out` for fp32, else in an fp32 buffer (one final rounding).
    partial = out
    if len(chunks) > 1 and z0.dtype != torch.float32:
        partial = _empty((n, c, h, wd), dev, torch.float32)
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    grid = (n * c, triton.cdiv(hw, block_hw))
    for i, (start, count) in enumerate(chunks):
        last = i == len(chunks) - 1
        _forward_kernel[grid](
            *_term_args(planes[start : start + count]),
            w,
            xp[0],
            w_skip if has_skip else w,
            psum,
            psumsq,
            partial,
            out if last else partial,
            mean,
            var,
            c,
            hw,
            m,
            k * c,
            start,
            splits,
            w.stride(0),
            xp[1],
            xp[2],
            xp[3],
            float(eps),
            NUM_TERMS=count,
            HAS_SKIP=has_skip and i == 0,
            ACCUMULATE=i > 0,
            BLOCK_K=block_k,
            BLOCK_HW=block_hw,
        )
    return out, mean, var


def _launch_backward(
    grad_out: Tensor, terms: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float, targets: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Triton backward on the terms and the incoming gradient as they are (strided); writes grad z_k into
    the contiguous ``targets[k]`` and returns ``(grad_w, grad_x, grad_w_skip)`` (the last two empty when
    there is no identity input)."""
    z0 = terms[0]
    k = len(terms)
    n, c, h, wd = z0.shape
    hw, m = h * wd, n * h * wd
    dev = z0.device
    has_skip = x is not None and w_skip is not None
    planes = [_plane(t) for t in terms]
    gp = _plane(grad_out)
    xp = _plane(x) if x is not None and w_skip is not None else planes[0]
    chunks = _chunks(k)
    block_k = _common.pow2_block(min(k, MAX_TERMS_PER_LAUNCH), 2)
    chunk, splits = _common.split_chunks(m, _num_splits(m, c), _BLOCK_R2)
    part_g = _empty((splits, c), dev, torch.float32)
    part_gx = _empty((splits, c), dev, torch.float32)
    part_gz = _empty((splits, k, c), dev, torch.float32)
    for i, (start, count) in enumerate(chunks):
        _backward_reduce_kernel[(c, splits)](
            gp[0],
            *_term_args(planes[start : start + count]),
            xp[0],
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
            start,
            gp[1],
            gp[2],
            gp[3],
            xp[1],
            xp[2],
            xp[3],
            float(eps),
            NUM_TERMS=count,
            FIRST=i == 0,
            HAS_SKIP=has_skip,
            BLOCK_K=block_k,
            BLOCK_R=_BLOCK_R2,
        )
    sum_g = _empty((c,), dev, torch.float32)
    sum_gz = _empty((k, c), dev, torch.float32)
    grad_w = _empty((k,), dev, w.dtype)
    if x is not None and w_skip is not None:
        grad_x, grad_ws = _empty((n, c, h, wd), dev, z0.dtype), _empty(tuple(w_skip.shape), dev, w_skip.dtype)
    else:
        grad_x, grad_ws = _no_skip_grads(z0, w)
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
        BLOCK_K=_common.pow2_block(k, 2),
        BLOCK_C=_common.pow2_block(c, 2),
    )
    block_hw = _common.pow2_block(hw, hi=_BLOCK_HW)
    for i, (start, count) in enumerate(chunks):
        _backward_elementwise_kernel[(n * c, triton.cdiv(hw, block_hw))](
            gp[0],
            *_term_args(planes[start : start + count]),
            *_pad(targets[start : start + count]),
            w,
            w_skip if has_skip else w,
            mean,
            var,
            sum_g,
            sum_gz,
            grad_x if has_skip else targets[0],
            c,
            hw,
            m,
            start,
            w.stride(0),
            gp[1],
            gp[2],
            gp[3],
            float(eps),
            NUM_TERMS=count,
            HAS_SKIP=has_skip and i == 0,
            BLOCK_HW=block_hw,
        )
    return grad_w, grad_x, grad_ws


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::mixed_bn_sum", mutates_args=())
def _mixed_bn_sum_op(
    z: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, mean, var)`` of the module docstring; ``z`` holds the K terms [N, C, H, W] or one stacked
    [K, N, C, H, W] tensor. Triton where :func:`triton_supports`, else PyTorch."""
    terms = _unstack(z)
    if triton_supports(terms[0].device, terms[0].dtype):
        return _launch_forward(terms, w, x, w_skip, eps)
    return _torch_forward(terms, w, x, w_skip, eps)


@_mixed_bn_sum_op.register_fake
def _mixed_bn_sum_fake(
    z: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    terms = _unstack(z)
    z0, k = terms[0], len(terms)
    sd = _common.acc_dtype(z0.dtype)
    return (
        z0.new_empty(tuple(z0.shape)),
        z0.new_empty((k, z0.shape[1]), dtype=sd),
        z0.new_empty((k, z0.shape[1]), dtype=sd),
    )


@torch.library.custom_op("fastnas::mixed_bn_sum_backward", mutates_args=())
def _mixed_bn_sum_backward_op(
    grad_out: Tensor, z: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:  # fmt: skip
    """``(grad z, grad_w, grad_x, grad_w_skip)``: grad z as ``z`` comes (one stacked gradient, or one per
    term, contiguous); grad x and grad w_skip are empty tensors without identity input."""
    terms = _unstack(z)
    z0 = terms[0]
    grads, targets = _grad_buffers(z, z0.dtype)
    mean, var = mean.contiguous(), var.contiguous()
    if triton_supports(z0.device, z0.dtype) and mean.dtype == torch.float32 and var.dtype == torch.float32:
        g = grad_out.to(z0.dtype)
        return grads, *_launch_backward(g, terms, w, x, w_skip, mean, var, eps, targets)
    return grads, *_torch_backward(grad_out, terms, w, x, w_skip, mean, var, eps, targets)


@_mixed_bn_sum_backward_op.register_fake
def _mixed_bn_sum_backward_fake(
    grad_out: Tensor, z: list[Tensor], w: Tensor, x: Tensor | None, w_skip: Tensor | None,
    mean: Tensor, var: Tensor, eps: float,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:  # fmt: skip
    z0 = _unstack(z)[0]
    if x is not None and w_skip is not None:
        grad_x, grad_ws = torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_skip)
    else:
        grad_x, grad_ws = _no_skip_grads(z0, w)
    grads = [t.new_empty(tuple(t.shape)) for t in z]
    return grads, w.new_empty(tuple(w.shape)), grad_x, grad_ws


def _setup_context(ctx, inputs, output) -> None:
    z, w, x, w_skip, eps = inputs
    _, mean, var = output
    ctx.num_z = len(z)
    ctx.save_for_backward(w, x, w_skip, mean, var, *z)
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)
    # mean/var never get a gradient: do not materialise zeros for them (each would be a launch)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_mean, _grad_var):
    if grad_out is None:  # nothing flows back (mean/var are not differentiable)
        return [None] * ctx.num_z, None, None, None, None
    w, x, w_skip, mean, var, *z = ctx.saved_tensors
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
    z: Terms, w: Tensor, x: Tensor | None = None, w_skip: Tensor | None = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_k w_k * BN(z_k) + w_skip * x`` with batch statistics, fused (every searched op but
    ``none``/identity ends in BN(affine=False)).

    Args:
        z: the pre-BN outputs of the edge's K BN-terminated ops: a sequence of K tensors [N, C, H, W] (one
            shape, dtype and device; strided views such as ``batched[e]`` and channels-last tensors are read
            in place, each term gets its own gradient), or one stacked [K, N, C, H, W] tensor.
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
    terms = _check_args(z, w, x, w_skip)
    if _common.use_kernels(terms[0]):
        op_z = [z] if isinstance(z, Tensor) else terms
        return torch.ops.fastnas.mixed_bn_sum(op_z, w, x, w_skip, float(eps))
    return mixed_bn_sum_reference(z, w, x, w_skip, eps)
