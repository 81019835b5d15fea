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
the tensors, else the same math in PyTorch (float64 always). The backward operator
``torch.ops.fastnas.pointwise_conv_stats_backward`` forms ``g`` elementwise and runs two einsums (GEMMs in
x's dtype, fp32 accumulation by the BLAS), never expanding a shared ``x``. Both have fake implementations
for ``torch.compile(fullgraph=True)``; no double backward.

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


def _launch_forward(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton forward: ``x`` with any strides, ``weight`` contiguous; returns ``(out, total, total_sq,
    shift)``."""
    e, c_out, c_in = weight.shape
    x5 = x if x.dim() == 5 else x.unsqueeze(0).expand(e, *x.shape)  # stride 0 over edges: no copy
    _, n, _, h, w = x5.shape
    hw = h * w
    out = _empty((e, n, c_out, h, w), x.device, x.dtype, channels_last=_channels_last(x))
    total = torch.zeros((e, c_out), device=x.device, dtype=torch.float32)
    total_sq = torch.zeros((e, c_out), device=x.device, dtype=torch.float32)
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
    """``(grad_x, grad_weight)``; an empty tensor for a gradient that is not needed."""
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


def _backward(ctx, grad_out, grad_total, grad_total_sq, _grad_shift):
    x, weight, out, shift = ctx.saved_tensors
    needs_x, needs_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    if not (needs_x or needs_w):
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
