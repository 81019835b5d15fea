"""Masked weighted node aggregation: the sum of a cell node's incoming (edge, op) terms, with terms switched
on and off on the device every step (the sparse searches: EnTranNAS-DST, Yang, You, Li, Wang, Qian & Lin,
"Towards Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture
Search", CVPR 2021; DDSAS, Yang, Hu, Lu, Sun, Mei, Zeng, Shi, Han & Li, "DDSAS: Dynamic and Differentiable
Space-Architecture Search", ACML 2021; EDAS, Hong, Ahn & Kim, "EDAS: Efficient and Differentiable
Architecture Search", arXiv 2019).

Given T terms ``y_t`` of one shape, weights ``w`` [T] and a mask ``m`` [T]::

    out = sum_t m_t * w_t * y_t        (m_t = 1 where mask[t] != 0, else 0; m_t = 1, w_t = 1 when omitted)

in the terms' dtype and shape, accumulated in fp32 (fp64 for fp64 terms). The mask is binary: any non-zero
value (True, 1, 2.5, NaN) marks an active term and scales nothing. Inactive terms are never read, so their
values (even NaN or inf) do not matter. Nothing synchronises with the host, so a mask or weights changed in
place between steps (CUDA graphs, ``torch.compile``) give the new sum. Backward, with ``g = grad out``::

    grad y_t = m_t * w_t * g           (inactive terms: zeros, written without reading g)
    grad w_t = m_t * sum(g * y_t)      (inactive terms: 0, nothing loaded)

and no gradient for the mask. Without weights and mask (a plain sum) every term's gradient is ``g`` itself:
no kernel, no copy. The terms are saved for backward only when the weights require grad.

:func:`masked_aggregate` runs ``torch.ops.fastnas.masked_aggregate`` (Triton; autograd through
``torch.ops.fastnas.masked_aggregate_backward``) where :func:`fastnas.kernels._common.use_kernels` allows,
else :func:`masked_aggregate_reference` (PyTorch, autograd). On devices or dtypes the kernels do not handle
(float64 always) the operators compute the same formulas with PyTorch ops; both have fake implementations
for ``torch.compile(fullgraph=True)``.

Layout: the kernels treat tensors as flat. Terms that share one non-overlapping dense layout are used as
they are and the output gets that layout; otherwise every term is made contiguous first. Weights and mask
may be strided views (a row of alpha), read in place.

Kernels: ``BLOCK`` elements per program, int64 offsets; at most 8 terms per launch (pointer arguments
``y0..y7``, constexpr ``NUM_TERMS``), T > 8 in chunks of 8.
1. ``_forward_kernel``: for each term whose ``m_t`` is non-zero, loads ``w_t`` and ``y_t`` and accumulates;
   later chunks add to the previous partial sum, kept in fp32 for 16-bit terms so the output rounds once.
2. ``_backward_kernel``: loads ``g`` once (only if a term of the chunk is active), writes ``grad y_t`` and,
   when the weights need a gradient, per-program partial ``sum(g * y_t)`` into fp32 [T, programs], which a
   ``torch.sum`` turns into ``grad w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, tl, triton, triton_supports

__all__ = ["MAX_TERMS_PER_LAUNCH", "masked_aggregate", "masked_aggregate_reference"]


MAX_TERMS_PER_LAUNCH = 8  # pointer arguments y0..y7 of the kernels
_BLOCK = 1024  # elements per program (4 warps: 8 per thread, 128-bit loads for fp32)


# --------------------------------------------------------------------------------------------------
# Arguments, layout, reference
# --------------------------------------------------------------------------------------------------


def _check_args(terms: Sequence[Tensor], weights: Tensor | None, mask: Tensor | None) -> list[Tensor]:
    """Validate the arguments of :func:`masked_aggregate`; returns the terms as a list.

    Raises ``TypeError``/``ValueError`` that say what is wrong and how to fix it.
    """
    name = "masked_aggregate"
    if isinstance(terms, Tensor) or not isinstance(terms, Sequence):
        raise TypeError(
            f"{name}: `terms` must be a list or tuple of tensors, got {type(terms).__name__}; "
            "pass [y_0, ..., y_{T-1}] (not a stacked tensor)."
        )
    terms = list(terms)
    if not terms:
        raise ValueError(f"{name}: `terms` is empty; a node needs at least one incoming term.")
    for t, y in enumerate(terms):
        if not isinstance(y, Tensor):
            raise TypeError(f"{name}: terms[{t}] is a {type(y).__name__}, not a tensor.")
    y0 = terms[0]
    _common.check_float_dtype(name, "terms", y0.dtype)
    for t, y in enumerate(terms[1:], start=1):
        label = f"terms[{t}]"
        _common.check_shape_match(name, label, y, "terms[0]", y0, "all terms of a node must have one shape")
        _common.check_dtype_match(name, label, y, "terms[0]", y0, "cast them to one dtype")
        _common.check_device_match(name, label, y, "terms[0]", y0)
    num = len(terms)
    for label, v in (("weights", weights), ("mask", mask)):
        if v is None:
            continue
        if not isinstance(v, Tensor):
            raise TypeError(f"{name}: `{label}` must be a tensor or None, got {type(v).__name__}.")
        if v.dim() != 1 or v.shape[0] != num:
            raise ValueError(
                f"{name}: `{label}` must be a 1-D tensor with one entry per term (T = {num}), "
                f"got shape {tuple(v.shape)}."
            )
        if v.device != y0.device:
            raise ValueError(
                f"{name}: `{label}` is on {v.device} but the terms are on {y0.device}; keep it on the "
                "terms' device (that is what avoids host synchronisation)."
            )
    if weights is not None and not weights.is_floating_point():
        raise TypeError(f"{name}: `weights` must be a floating tensor, got {weights.dtype}.")
    if mask is not None and mask.is_complex():
        raise TypeError(
            f"{name}: `mask` must be bool, integer or floating (non-zero = active), got {mask.dtype}."
        )
    return terms


def masked_aggregate_reference(
    terms: Sequence[Tensor], weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Plain PyTorch ``sum_t m_t * w_t * y_t`` in fp32 (fp64 for fp64 terms), cast to the terms' dtype;
    autograd through it gives the reference gradients (none for the mask).

    Inactive terms go through ``torch.where``, so, as on the kernel path, their values (even NaN) do not
    reach the output or the weights' gradient.
    """
    terms = _check_args(terms, weights, mask)
    dtype = terms[0].dtype
    acc = _common.acc_dtype(dtype)
    if weights is None and mask is None and len(terms) == 1:
        return terms[0].clone()
    w = None if weights is None else weights.to(acc)
    active = None
    if mask is not None:
        active = mask.detach() != 0
        w = torch.where(active, w if w is not None else 1.0, 0.0).to(acc)
    out: Tensor | None = None
    for t, y in enumerate(terms):
        yt = y.to(acc)
        if active is not None:
            yt = torch.where(active[t], yt, 0.0)
        term = yt if w is None else w[t] * yt
        out = term if out is None else out + term
    assert out is not None
    return out.to(dtype)


def _is_dense(t: Tensor) -> bool:
    """Whether ``t`` is non-overlapping and dense: its elements fill ``numel`` consecutive slots."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Equal shapes and equal strides on every dimension of size > 1 (so one flat index is one element)."""
    return a.shape == b.shape and all(
        sa == sb for sz, sa, sb in zip(a.shape, a.stride(), b.stride(), strict=True) if sz != 1
    )


def _prepare_terms(terms: list[Tensor]) -> list[Tensor]:
    """The terms as they are when they share one dense layout, else contiguous copies of them."""
    y0 = terms[0]
    if _is_dense(y0) and all(_same_layout(y, y0) for y in terms[1:]):
        return terms
    return [y.contiguous() for y in terms]


def _as_layout(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in the (dense) layout of ``like``: itself when it already has it, else a copy."""
    if _same_layout(t, like):
        return t
    return torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device).copy_(t)


def _prepare_backward(grad_out: Tensor, terms: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
    """The saved terms (empty when the weights need no gradient) prepared as in the forward, and the
    incoming gradient in their dtype and layout (without terms: in its own dtype, and its own layout when
    dense)."""
    prepared = _prepare_terms(list(terms)) if terms else []
    if prepared:
        return prepared, _as_layout(grad_out.to(prepared[0].dtype), prepared[0])
    return prepared, grad_out if _is_dense(grad_out) else grad_out.contiguous()


def _no_grad_weights(g: Tensor, weights: Tensor | None) -> Tensor:
    """The empty tensor returned for grad weights when they need no gradient."""
    return g.new_empty((0,), dtype=torch.float32 if weights is None else weights.dtype)


_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (used when the kernels cannot run on the tensors' device or dtype)
# --------------------------------------------------------------------------------------------------


def _torch_forward(terms: list[Tensor], weights: Tensor | None, mask: Tensor | None) -> Tensor:
    with torch.no_grad():
        out = masked_aggregate_reference(terms, weights, mask)
    return _as_layout(out, terms[0])


def _torch_backward(
    g: Tensor, terms: list[Tensor], weights: Tensor | None, mask: Tensor | None,
    num_terms: int, grad_terms: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    acc = _common.acc_dtype(g.dtype)
    gf = g.to(acc)
    w = None if weights is None else weights.to(acc)
    active = None if mask is None else mask != 0
    grads: list[Tensor] = []
    if grad_terms:
        for t in range(num_terms):
            c = gf if w is None else gf * w[t]
            if active is not None:
                c = torch.where(active[t], c, 0.0)
            c = c.to(g.dtype)
            grads.append(_as_layout(c.clone() if c is g else c, g))
    if not terms:
        return grads, _no_grad_weights(g, weights)
    assert weights is not None
    sums = []
    for t, y in enumerate(terms):
        yt = y.to(acc)
        if active is not None:
            yt = torch.where(active[t], yt, 0.0)
        sums.append((gf * yt).sum())
    return grads, torch.stack(sums).to(weights.dtype)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _pick(t: tl.constexpr, p0, p1, p2, p3, p4, p5, p6, p7):
        """Pointer ``p_t`` for a compile-time ``t`` (resolved at compile time, no runtime select)."""
        return (p0, p1, p2, p3, p4, p5, p6, p7)[t]

    @triton.jit
    def _block(N, BLOCK: tl.constexpr):
        """Program b's block of the flat tensors: b, the int64 offsets and the in-bounds mask."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        return pid, offs, offs < N

    @triton.jit
    def _load(ptr, offs, inb):
        """A block of a tensor as float32 (0 out of bounds)."""
        return tl.load(ptr + offs, mask=inb, other=0.0).to(tl.float32)

    @triton.jit
    def _weighted(y_ptr, w_ptr, offs, inb, HAS_W: tl.constexpr):
        """w_t * y_t over a block, float32 (y_t alone without weights)."""
        y = _load(y_ptr, offs, inb)
        if HAS_W:
            y = y * tl.load(w_ptr).to(tl.float32)
        return y

    @triton.jit
    def _forward_kernel(
        y0, y1, y2, y3, y4, y5, y6, y7,  # the launch's terms (unused slots: any tensor)
        w_ptr,
        m_ptr,
        prev_ptr,
        out_ptr,
        N,
        W_STRIDE,
        M_STRIDE,
        NUM_TERMS: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_M: tl.constexpr,
        ACCUMULATE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Program b: out[block] = (prev[block] if ACCUMULATE) + sum over active t of w_t * y_t[block]."""
        _, offs, inb = _block(N, BLOCK)
        if ACCUMULATE:  # noqa: SIM108 (a static branch on a constexpr)
            acc = _load(prev_ptr, offs, inb)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        for t in tl.static_range(NUM_TERMS):
            y_ptr = _pick(t, y0, y1, y2, y3, y4, y5, y6, y7)
            w_t = w_ptr + t * W_STRIDE
            if HAS_M:
                if tl.load(m_ptr + t * M_STRIDE) != 0:  # scalar branch: an inactive y_t is never loaded
                    acc += _weighted(y_ptr, w_t, offs, inb, HAS_W)
            else:
                acc += _weighted(y_ptr, w_t, offs, inb, HAS_W)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=inb)

    @triton.jit
    def _backward_term(
        g,
        y_ptr,
        gy_ptr,
        w_ptr,
        part_ptr,
        offs,
        inb,
        HAS_W: tl.constexpr,
        GRAD_Y: tl.constexpr,
        GRAD_W: tl.constexpr,
    ):
        """One active term: grad y = w * g for the block, and the block's partial sum(g * y)."""
        if GRAD_Y:
            gy = g
            if HAS_W:
                gy = g * tl.load(w_ptr).to(tl.float32)
            tl.store(gy_ptr + offs, gy.to(gy_ptr.dtype.element_ty), mask=inb)
        if GRAD_W:
            tl.store(part_ptr, tl.sum(g * _load(y_ptr, offs, inb), axis=0))

    @triton.jit
    def _backward_kernel(
        g_ptr,
        y0, y1, y2, y3, y4, y5, y6, y7,  # the launch's terms (unused slots: any tensor)
        gy0, gy1, gy2, gy3, gy4, gy5, gy6, gy7,  # their gradients
        w_ptr,
        m_ptr,
        part_ptr,
        N,
        P,
        W_STRIDE,
        M_STRIDE,
        NUM_TERMS: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_M: tl.constexpr,
        GRAD_Y: tl.constexpr,
        GRAD_W: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Program b: grad y_t[block b] for the chunk's terms and part[t, b] = sum(g * y_t) over block b."""
        pid, offs, inb = _block(N, BLOCK)
        if HAS_M:
            # g is read only when some term of this launch is active.
            n_active = (tl.load(m_ptr) != 0).to(tl.int32)
            for t in tl.static_range(1, NUM_TERMS):
                n_active += (tl.load(m_ptr + t * M_STRIDE) != 0).to(tl.int32)
            g = tl.zeros([BLOCK], dtype=tl.float32)
            if n_active > 0:
                g = _load(g_ptr, offs, inb)
        else:
            g = _load(g_ptr, offs, inb)
        for t in tl.static_range(NUM_TERMS):
            y_ptr = _pick(t, y0, y1, y2, y3, y4, y5, y6, y7)
            gy_ptr = _pick(t, gy0, gy1, gy2, gy3, gy4, gy5, gy6, gy7)
            w_t = w_ptr + t * W_STRIDE
            part_t = part_ptr + t * P + pid
            if HAS_M:
                if tl.load(m_ptr + t * M_STRIDE) != 0:
                    _backward_term(g, y_ptr, gy_ptr, w_t, part_t, offs, inb, HAS_W, GRAD_Y, GRAD_W)
                else:  # inactive: zeros, nothing loaded
                    if GRAD_Y:
                        zero = tl.zeros([BLOCK], dtype=tl.float32)
                        tl.store(gy_ptr + offs, zero.to(gy_ptr.dtype.element_ty), mask=inb)
                    if GRAD_W:
                        tl.store(part_t, 0.0)
            else:
                _backward_term(g, y_ptr, gy_ptr, w_t, part_t, offs, inb, HAS_W, GRAD_Y, GRAD_W)


def _chunks(num_terms: int) -> list[tuple[int, int]]:
    """``(start, count)`` of the launches: at most :data:`MAX_TERMS_PER_LAUNCH` terms each."""
    step = MAX_TERMS_PER_LAUNCH
    return [(s, min(step, num_terms - s)) for s in range(0, num_terms, step)]


def _pad(ptrs: list[Tensor], dummy: Tensor) -> list[Tensor]:
    return ptrs + [dummy] * (MAX_TERMS_PER_LAUNCH - len(ptrs))


def _scalars(v: Tensor | None, dummy: Tensor, start: int) -> tuple[Tensor, int]:
    """A [T] weights/mask vector as the kernel argument of the launch whose terms begin at ``start`` (a view
    from ``start``; bool viewed as uint8; no copy), and its stride; ``(dummy, 0)`` without one."""
    if v is None:
        return dummy, 0
    if v.dtype == torch.bool:
        v = v.view(torch.uint8)
    return v[start:], v.stride(0)


def _launch_forward(terms: list[Tensor], weights: Tensor | None, mask: Tensor | None) -> Tensor:
    """Triton forward on terms that share one dense layout (see :func:`_prepare_terms`)."""
    y0 = terms[0]
    out = _empty(tuple(y0.shape), y0.device, y0.dtype, stride=y0.stride())
    n = y0.numel()
    if n == 0:
        return out
    chunks = _chunks(len(terms))
    # Partial sums between chunks: in `out` for fp32, else in an fp32 buffer (one final rounding).
    partial = out
    if len(chunks) > 1 and y0.dtype != torch.float32:
        partial = _empty(tuple(y0.shape), y0.device, torch.float32, stride=y0.stride())
    grid = (triton.cdiv(n, _BLOCK),)
    for i, (start, count) in enumerate(chunks):
        last = i == len(chunks) - 1
        w, w_stride = _scalars(weights, y0, start)
        m, m_stride = _scalars(mask, y0, start)
        _forward_kernel[grid](
            *_pad(terms[start : start + count], y0),
            w,
            m,
            partial,
            out if last else partial,
            n,
            w_stride,
            m_stride,
            NUM_TERMS=count,
            HAS_W=weights is not None,
            HAS_M=mask is not None,
            ACCUMULATE=i > 0,
            BLOCK=_BLOCK,
        )
    return out


def _launch_backward(
    g: Tensor, terms: list[Tensor], weights: Tensor | None, mask: Tensor | None,
    num_terms: int, grad_terms: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    """Triton backward; ``g`` in the layout of the terms (when given); returns ``(grad terms, grad w)``."""
    grad_w = bool(terms)
    assert not grad_w or weights is not None
    n = g.numel()
    shape, stride = tuple(g.shape), g.stride()
    grads = [_empty(shape, g.device, g.dtype, stride=stride) for _ in range(num_terms)] if grad_terms else []
    programs = triton.cdiv(n, _BLOCK)
    part = _empty((num_terms, programs), g.device, torch.float32) if grad_w else g
    if n > 0:
        for start, count in _chunks(num_terms):
            w, w_stride = _scalars(weights, g, start)
            m, m_stride = _scalars(mask, g, start)
            _backward_kernel[(programs,)](
                g,
                *_pad(terms[start : start + count] if grad_w else [], g),
                *_pad(grads[start : start + count], g),
                w,
                m,
                part[start:] if grad_w else part,
                n,
                programs,
                w_stride,
                m_stride,
                NUM_TERMS=count,
                HAS_W=weights is not None,
                HAS_M=mask is not None,
                GRAD_Y=grad_terms,
                GRAD_W=grad_w,
                BLOCK=_BLOCK,
            )
    if not grad_w:
        return grads, _no_grad_weights(g, weights)
    assert weights is not None
    return grads, part.sum(dim=1).to(weights.dtype)


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::masked_aggregate", mutates_args=())
def _masked_aggregate_op(terms: list[Tensor], weights: Tensor | None, mask: Tensor | None) -> Tensor:
    """``sum_t m_t * w_t * y_t`` (module docstring); Triton where :func:`triton_supports`, else PyTorch."""
    terms = _prepare_terms(list(terms))
    if triton_supports(terms[0].device, terms[0].dtype):
        return _launch_forward(terms, weights, mask)
    return _torch_forward(terms, weights, mask)


@_masked_aggregate_op.register_fake
def _masked_aggregate_fake(terms: list[Tensor], weights: Tensor | None, mask: Tensor | None) -> Tensor:
    y0 = _prepare_terms(list(terms))[0]
    return y0.new_empty_strided(tuple(y0.shape), y0.stride())


@torch.library.custom_op("fastnas::masked_aggregate_backward", mutates_args=())
def _masked_aggregate_backward_op(
    grad_out: Tensor, terms: list[Tensor], weights: Tensor | None, mask: Tensor | None,
    num_terms: int, grad_terms: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    """``(grad terms, grad weights)``. ``terms`` are given exactly when the weights need a gradient (else
    ``[]`` and grad weights is an empty tensor); ``grad_terms=False`` returns ``[]`` for the terms."""
    terms, g = _prepare_backward(grad_out, terms)
    if triton_supports(g.device, g.dtype):
        return _launch_backward(g, terms, weights, mask, num_terms, grad_terms)
    return _torch_backward(g, terms, weights, mask, num_terms, grad_terms)


@_masked_aggregate_backward_op.register_fake
def _masked_aggregate_backward_fake(
    grad_out: Tensor, terms: list[Tensor], weights: Tensor | None, mask: Tensor | None,
    num_terms: int, grad_terms: bool,
) -> tuple[list[Tensor], Tensor]:  # fmt: skip
    terms, g = _prepare_backward(grad_out, terms)
    grads = [g.new_empty_strided(tuple(g.shape), g.stride()) for _ in range(num_terms)] if grad_terms else []
    if terms and weights is not None:
        return grads, weights.new_empty((num_terms,))
    return grads, _no_grad_weights(g, weights)


def _setup_context(ctx, inputs, output) -> None:
    terms, weights, mask = inputs
    ctx.num_terms = len(terms)
    ctx.plain = weights is None and mask is None
    ctx.grad_terms = any(y.requires_grad for y in terms)
    ctx.grad_w = weights is not None and weights.requires_grad
    if not ctx.plain:
        # The terms are needed only for grad w; a plain sum saves nothing.
        ctx.save_for_backward(weights, mask, *(terms if ctx.grad_w else ()))


def _backward(ctx, grad_out):
    if ctx.plain:
        return [grad_out] * ctx.num_terms, None, None
    weights, mask, *terms = ctx.saved_tensors
    grads, grad_w = torch.ops.fastnas.masked_aggregate_backward(
        grad_out, terms, weights, mask, ctx.num_terms, ctx.grad_terms
    )
    return (
        grads if ctx.grad_terms else [None] * ctx.num_terms,
        grad_w if ctx.grad_w else None,
        None,
    )


_masked_aggregate_op.register_autograd(_backward, setup_context=_setup_context)


def masked_aggregate(
    terms: Sequence[Tensor], weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """``sum_t m_t * w_t * y_t`` over a node's incoming terms, inactive terms skipped on the device (DST
    thresholds, EDAS single edges, DDSAS subspaces).

    Args:
        terms: T >= 1 tensors of one shape, dtype (float32, bfloat16, float16 or float64) and device.
        weights: [T] floating weights (any float dtype), or None for all ones.
        mask: [T] bool or numeric tensor on the terms' device, non-zero = active, or None for all active.
            Binary: it selects terms and scales nothing; it gets no gradient.

    Returns:
        The sum in the terms' dtype and shape (fp32 accumulation; zeros when no term is active).

    Uses the Triton operator where :func:`fastnas.kernels._common.use_kernels` allows it, else
    :func:`masked_aggregate_reference`. No host synchronisation on either path.
    """
    terms = _check_args(terms, weights, mask)
    if _common.use_kernels(terms[0]):
        return torch.ops.fastnas.masked_aggregate(terms, weights, mask)
    return masked_aggregate_reference(terms, weights, mask)
