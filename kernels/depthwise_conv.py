"""ReLU fused into a depthwise convolution, batched over the E edges that leave one node of a DARTS cell
(the first two layers of SepConv and DilConv: ``ReLU -> Conv(k, stride s, padding p, dilation d,
groups=C)``, k in 3/5/7, s and d in 1/2; Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019; depthwise separable convolutions as in Chollet, "Xception: Deep Learning with
Depthwise Separable Convolutions", CVPR 2017).

With ``x_e`` = ``x`` (one input [N, C, H, W] shared by all edges) or ``x[e]`` (inputs [E, N, C, H, W]),
weights ``w`` [E, C, k, k], ``r = relu(x)`` (``x`` when ``relu=False``) and
``Ho = (H + 2p - d(k-1) - 1) // s + 1`` (``Wo`` alike)::

    out[e, n, c, oh, ow] = sum_{th, tw} w[e, c, th, tw] * r_e[n, c, oh*s - p + th*d, ow*s - p + tw*d]

(zero outside the image), i.e. ``F.conv2d(r_e, w[e].unsqueeze(1), stride=s, padding=p, dilation=d,
groups=C)``. Backward, with ``g = grad out``: grad x = ``(x > 0) *`` the transposed convolution of ``g``
(summed over the edges for a shared ``x``, without E copies); grad w = the correlation of ``g`` with ``r_e``
over (n, oh, ow).

Layouts: ``x``, ``w`` and ``g`` are read through their strides (NCHW, channels-last, sliced or expanded
views; no copies). ``out`` [E, N, C, Ho, Wo] is channels-last per edge (memory [E, N, Ho, Wo, C]) when ``x``
is channels-last, else contiguous; ``grad x`` follows the same rule; ``grad w`` is contiguous.

:func:`relu_depthwise_conv` runs ``torch.ops.fastnas.relu_depthwise_conv`` (Triton; autograd through
``torch.ops.fastnas.relu_depthwise_conv_backward``) where :func:`fastnas.kernels._common.use_kernels`
allows, else :func:`relu_depthwise_conv_reference` (``F.relu`` + ``F.conv2d(groups=C)`` per edge,
autograd). On devices or dtypes the kernels do not handle (float64 always) the operators compute the same
math with PyTorch ops; both have fake implementations for ``torch.compile(fullgraph=True)``. No double
backward on the kernel path.

Dtypes: ``x`` and ``w`` share one dtype (float32, bfloat16, float16 on the kernels); sums are float32
(float64 for float64) and rounded once to the inputs' dtype.

Kernels: taps unrolled with ``tl.static_range``, zero padding by masked loads; tiles put the memory-contiguous
dimension last (``[BLOCK_P, BLOCK_C]`` for channels-last, ``[BLOCK_C, BLOCK_P]`` for NCHW: the ``PC`` flag).
1. ``_forward_kernel``, one program per (e, n, pixel block, channel block) tile of ``out``.
2. ``_backward_input_kernel``, one program per tile of ``grad x`` (looping over the E edges for a shared
   ``x``), in gather form: for each input pixel and tap, the output pixel it feeds, where
   ``ih + p - th*d`` is non-negative, divisible by s and maps inside ``Ho``.
3. ``_backward_weight_kernel``, grid (E * channel blocks, S): all k*k taps at once (each ``g`` tile loaded
   once), reducing S chunks of the N*Ho*Wo output pixels into float32 partials [S, E, C, k*k] that a
   ``torch.sum`` over S turns into ``grad w``.
No host synchronisation; offsets are int64 across (e, n), and inside a sample when its span needs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels._common import HAS_TRITON, TRITON_INTERPRET, tl, triton, triton_supports

__all__ = ["output_size", "relu_depthwise_conv", "relu_depthwise_conv_reference"]


_TILE = 2048  # elements of the [pixels, channels] tile of the forward and input-gradient kernels
_TILE3 = 4096  # elements of the [taps, pixels, channels] tile of the weight-gradient kernel
_MAX_BLOCK_C = 32  # channel block for channels-last inputs (32 fp32 = one 128-byte line)
_MAX_BLOCK_P = 128  # pixel block for NCHW inputs
_NUM_WARPS = 4  # forward / input-gradient programs (with rolled tap loops: no spills on sm_80 / sm_90)
_TARGET_PROGRAMS = 1024  # weight-gradient programs wanted to fill a GPU
_MAX_SPLITS = 128
_INT32_SPAN = 2**31


# --------------------------------------------------------------------------------------------------
# Arguments, layout, reference
# --------------------------------------------------------------------------------------------------


def output_size(size: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one spatial dimension (``F.conv2d``'s rule)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"relu_depthwise_conv: `{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"relu_depthwise_conv: `{name}` must be {what}, got {value}.")


def _check_args(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool) -> None:
    """Validate the arguments of :func:`relu_depthwise_conv`; raises ``TypeError``/``ValueError``."""
    name = "relu_depthwise_conv"
    if not isinstance(x, Tensor) or x.dim() not in (4, 5):
        shapes = "[N, C, H, W] (one input shared by all edges) or [E, N, C, H, W] (one input per edge)"
        raise _common.shape_error(name, "x", x, shapes)
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise _common.shape_error(name, "weight", weight, "[E, C, k, k] (one depthwise filter per edge)")
    _common.check_float_dtype(name, "`x`", x.dtype)
    fix = "cast one of them (under autocast, cast the weight to the activation dtype)"
    _common.check_dtype_match(name, "`weight`", weight, "`x`", x, fix)
    _common.check_device_match(name, "`weight`", weight, "`x`", x, "move one of them")
    e, c, kh, kw = weight.shape
    if kh != kw:
        raise ValueError(f"{name}: the depthwise filters must be square, got {kh}x{kw}.")
    if c != x.shape[-3]:
        raise ValueError(
            f"{name}: `weight` has {c} channels but `x` has C = {x.shape[-3]} (dim -3); "
            f"weight must be [E, C, k, k]."
        )
    if x.dim() == 5 and x.shape[0] != e:
        raise ValueError(
            f"{name}: per-edge `x` has {x.shape[0]} edges (dim 0) but `weight` has E = {e}; "
            f"pass a 4-D x to share one input across all edges."
        )
    _check_int("stride", stride, 1)
    _check_int("dilation", dilation, 1)
    _check_int("padding", padding, 0)
    if not isinstance(relu, bool):
        raise TypeError(f"{name}: `relu` must be a bool, got {type(relu).__name__}.")
    if e == 0 or c == 0 or x.shape[-4] == 0 or kh == 0:
        raise ValueError(
            f"{name}: the output would be empty (E = {e}, N = {x.shape[-4]}, C = {c}, k = {kh}); "
            f"every one must be at least 1."
        )
    h, w = x.shape[-2], x.shape[-1]
    ho, wo = output_size(h, kh, stride, padding, dilation), output_size(w, kh, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{name}: the output would be empty: input {h}x{w} with kernel {kh}, dilation {dilation}, "
            f"padding {padding}, stride {stride} gives {ho}x{wo}; increase the padding or the input size."
        )


def _channels_last(x: Tensor) -> bool:
    """Whether C is innermost in ``x``'s [N, C, H, W] slices (C's stride below W's)."""
    return x.shape[-3] > 1 and x.stride(-3) < x.stride(-1)


def _like_x(shape: tuple[int, ...], x: Tensor) -> Tensor:
    """An empty tensor of ``shape`` (C at dim -3) in ``x``'s dtype, device and layout (NCHW or
    channels-last)."""
    return _common.empty(shape, x.device, x.dtype, channels_last=_channels_last(x))


_empty = _common.empty  # the buffers the kernels write in full (tests replace it with a NaN fill)


def _out_shape(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int) -> tuple[int, ...]:
    e, c, k, _ = weight.shape
    n, h, w = x.shape[-4], x.shape[-2], x.shape[-1]
    ho, wo = output_size(h, k, stride, padding, dilation), output_size(w, k, stride, padding, dilation)
    return (e, n, c, ho, wo)


def _reference_math(
    x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> Tensor:
    r = F.relu(x) if relu else x
    c = x.shape[-3]
    outs = []
    for e in range(weight.shape[0]):
        xe = r if x.dim() == 4 else r[e]
        outs.append(F.conv2d(xe, weight[e].unsqueeze(1), None, stride, padding, dilation, c))
    return torch.stack(outs)


def relu_depthwise_conv_reference(
    x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, dilation: int = 1, relu: bool = True
) -> Tensor:
    """Plain PyTorch reference: ``out[e] = F.conv2d(relu(x_e), weight[e].unsqueeze(1), groups=C)`` per
    edge, stacked to [E, N, C, Ho, Wo]; autograd through it gives the reference gradients (summed over the
    edges for a shared ``x``).
    """
    _check_args(x, weight, stride, padding, dilation, relu)
    return _reference_math(x, weight, stride, padding, dilation, relu)


# --------------------------------------------------------------------------------------------------
# PyTorch math of the operators (used when the kernels cannot run on the tensors' device or dtype)
# --------------------------------------------------------------------------------------------------


def _torch_forward(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool) -> Tensor:
    acc = _common.acc_dtype(x.dtype)
    ref = _reference_math(x.to(acc), weight.to(acc), stride, padding, dilation, relu)
    return _like_x(_out_shape(x, weight, stride, padding, dilation), x).copy_(ref)


def _torch_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> tuple[Tensor, Tensor]:
    acc = _common.acc_dtype(x.dtype)
    xf, wf, g = x.to(acc), weight.to(acc), grad_out.to(acc)
    r = F.relu(xf) if relu else xf
    c = x.shape[-3]
    grad_r = torch.zeros(x.shape, device=x.device, dtype=acc)
    grad_ws = []
    for e in range(weight.shape[0]):
        re = r if x.dim() == 4 else r[e]
        gi, gw, _ = torch.ops.aten.convolution_backward(
            g[e], re, wf[e].unsqueeze(1), None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], c,
            [True, True, False],
        )  # fmt: skip
        if x.dim() == 4:
            grad_r += gi
        else:
            grad_r[e] = gi
        grad_ws.append(gw.squeeze(1))
    if relu:
        grad_r = grad_r * (xf > 0)
    return _like_x(tuple(x.shape), x).copy_(grad_r), torch.stack(grad_ws).to(weight.dtype)


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _outer(p, c, PC: tl.constexpr):
        """[P] and [C] vectors combined (``+``) into a [P, C] tile (``PC``) or a [C, P] tile."""
        if PC:  # noqa: SIM108 (a static branch on a constexpr)
            t = p[:, None] + c[None, :]
        else:
            t = c[:, None] + p[None, :]
        return t

    @triton.jit
    def _outer_and(p, c, PC: tl.constexpr):
        """[P] and [C] masks combined (``&``) into a [P, C] or [C, P] tile."""
        if PC:  # noqa: SIM108
            t = p[:, None] & c[None, :]
        else:
            t = c[:, None] & p[None, :]
        return t

    @triton.jit
    def _chan(c, PC: tl.constexpr):
        """A [C] vector broadcastable against a [P, C] or [C, P] tile."""
        if PC:  # noqa: SIM108
            t = c[None, :]
        else:
            t = c[:, None]
        return t

    @triton.jit
    def _pix(p, PC: tl.constexpr):
        """A [P] vector broadcastable against a [P, C] or [C, P] tile."""
        if PC:  # noqa: SIM108
            t = p[:, None]
        else:
            t = p[None, :]
        return t

    @triton.jit
    def _zeros(BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, PC: tl.constexpr):
        """A float32 [BLOCK_P, BLOCK_C] (``PC``) or [BLOCK_C, BLOCK_P] accumulator tile of zeros."""
        if PC:
            t = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        else:
            t = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        return t

    @triton.jit
    def _tile(
        N,
        C,
        ROWS,
        COLS,
        N_PBLK,
        N_CBLK,
        OFF64: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """The tile of program ((g*N + n)*N_PBLK + pblk)*N_CBLK + cblk over [G, N, C, ROWS, COLS]:
        ``(g, n)`` (int64), the row and column of each of its pixels, its channels and both masks (pixels
        and channels int64 when ``OFF64``)."""
        pid = tl.program_id(0)
        cblk = pid % N_CBLK
        rest = pid // N_CBLK
        pblk = rest % N_PBLK
        gn = rest // N_PBLK
        g = (gn // N).to(tl.int64)
        n = (gn % N).to(tl.int64)
        p = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
        cs = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = p < ROWS * COLS
        cmask = cs < C
        if OFF64:
            p = p.to(tl.int64)
            cs = cs.to(tl.int64)
        row = p // COLS
        return g, n, row, p - row * COLS, cs, pmask, cmask

    @triton.jit
    def _forward_kernel(
        x_ptr, w_ptr, out_ptr,
        N, C, H, W, HO, WO, PAD,
        sx_e, sx_n, sx_c, sx_h, sx_w,  # x as [E, N, C, H, W] (sx_e = 0 for a shared x)
        sw_e, sw_c, sw_h, sw_w,
        so_e, so_n, so_c, so_h, so_w,
        N_PBLK, N_CBLK,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, RELU: tl.constexpr,
        PC: tl.constexpr, OFF64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Program ((e*N + n)*N_PBLK + pblk)*N_CBLK + cblk: one pixels x channels tile of out[e, n]."""
        e, n, oh, ow, cs, pmask, cmask = _tile(N, C, HO, WO, N_PBLK, N_CBLK, OFF64, BLOCK_P, BLOCK_C)
        ih0 = oh * STRIDE - PAD
        iw0 = ow * STRIDE - PAD
        x_c = x_ptr + e * sx_e + n * sx_n + _chan(cs * sx_c, PC)
        w_c = w_ptr + e * sw_e + cs * sw_c
        acc = _zeros(BLOCK_P, BLOCK_C, PC)
        for th in range(KSIZE):  # rolled loops: unrolled KSIZE^2 taps hoist their loads and spill
            ih = ih0 + th * DIL
            hmask = pmask & (ih >= 0) & (ih < H)
            for tw in range(KSIZE):
                iw = iw0 + tw * DIL
                m = _outer_and(hmask & (iw >= 0) & (iw < W), cmask, PC)
                xv = tl.load(x_c + _pix(ih * sx_h + iw * sx_w, PC), mask=m, other=0.0).to(tl.float32)
                if RELU:
                    xv = tl.where(xv > 0.0, xv, 0.0)
                wv = tl.load(w_c + th * sw_h + tw * sw_w, mask=cmask, other=0.0).to(tl.float32)
                acc += xv * _chan(wv, PC)
        o = out_ptr + e * so_e + n * so_n + _outer(oh * so_h + ow * so_w, cs * so_c, PC)
        tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=_outer_and(pmask, cmask, PC))

    @triton.jit
    def _backward_input_kernel(
        g_ptr, x_ptr, w_ptr, gx_ptr,
        N, C, H, W, HO, WO, PAD, NE,
        sg_e, sg_n, sg_c, sg_h, sg_w,
        sx_e, sx_n, sx_c, sx_h, sx_w,  # x and grad x as [E, N, C, H, W] (e stride 0 when shared)
        sw_e, sw_c, sw_h, sw_w,
        sgx_e, sgx_n, sgx_c, sgx_h, sgx_w,
        N_PBLK, N_CBLK,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, RELU: tl.constexpr,
        PC: tl.constexpr, OFF64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Program ((q*N + n)*N_PBLK + pblk)*N_CBLK + cblk: one tile of grad x[q, n] (q = 0 for shared x),
        summing edges q .. q + NE - 1 (NE = E for shared x, 1 per edge)."""
        q, n, ih, iw, cs, pmask, cmask = _tile(N, C, H, W, N_PBLK, N_CBLK, OFF64, BLOCK_P, BLOCK_C)
        acc = _zeros(BLOCK_P, BLOCK_C, PC)
        for j in range(0, NE):
            e = q + j
            g_c = g_ptr + e * sg_e + n * sg_n + _chan(cs * sg_c, PC)
            w_c = w_ptr + e * sw_e + cs * sw_c
            for th in range(KSIZE):  # rolled loops, as in the forward
                hnum = ih + PAD - th * DIL
                oh = hnum // STRIDE
                hmask = pmask & (hnum >= 0) & (oh < HO)
                if STRIDE > 1:
                    hmask = hmask & (oh * STRIDE == hnum)
                for tw in range(KSIZE):
                    wnum = iw + PAD - tw * DIL
                    ow = wnum // STRIDE
                    pm = hmask & (wnum >= 0) & (ow < WO)
                    if STRIDE > 1:
                        pm = pm & (ow * STRIDE == wnum)
                    m = _outer_and(pm, cmask, PC)
                    gv = tl.load(g_c + _pix(oh * sg_h + ow * sg_w, PC), mask=m, other=0.0).to(tl.float32)
                    wv = tl.load(w_c + th * sw_h + tw * sw_w, mask=cmask, other=0.0).to(tl.float32)
                    acc += gv * _chan(wv, PC)
        m_out = _outer_and(pmask, cmask, PC)
        if RELU:
            xo = x_ptr + q * sx_e + n * sx_n + _outer(ih * sx_h + iw * sx_w, cs * sx_c, PC)
            xv = tl.load(xo, mask=m_out, other=0.0).to(tl.float32)
            acc = tl.where(xv > 0.0, acc, 0.0)
        o = gx_ptr + q * sgx_e + n * sgx_n + _outer(ih * sgx_h + iw * sgx_w, cs * sgx_c, PC)
        tl.store(o, acc.to(gx_ptr.dtype.element_ty), mask=m_out)

    @triton.jit
    def _backward_weight_kernel(
        g_ptr, x_ptr, part_ptr,
        E, N, C, H, W, HO, WO, PAD, R, CHUNK,
        sg_e, sg_n, sg_c, sg_h, sg_w,
        sx_e, sx_n, sx_c, sx_h, sx_w,  # x as [E, N, C, H, W] (sx_e = 0 for a shared x)
        N_CBLK,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, DIL: tl.constexpr, RELU: tl.constexpr,
        PC: tl.constexpr, OFF64: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Program (e*N_CBLK + cblk, s): partial grad w[e, channel block, all taps] over output pixels
        [s*CHUNK, (s+1)*CHUNK) of the flattened (n, oh, ow) range, stored to part[s, e, c, tap]."""
        pid = tl.program_id(0)
        s = tl.program_id(1)
        e = (pid // N_CBLK).to(tl.int64)
        cblk = pid % N_CBLK
        t = tl.arange(0, BLOCK_T)
        tmask = t < KSIZE * KSIZE
        th = t // KSIZE
        tw = t - th * KSIZE
        cs = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        cs64 = cs.to(tl.int64)
        g_e = g_ptr + e * sg_e
        x_e = x_ptr + e * sx_e
        acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        howo = HO * WO
        start = s * CHUNK
        for r0 in range(start, start + CHUNK, BLOCK_P):
            r = r0 + tl.arange(0, BLOCK_P)
            rmask = r < R
            n = r // howo
            rem = r - n * howo
            oh = rem // WO
            ow = rem - oh * WO
            if OFF64:
                oh = oh.to(tl.int64)
                ow = ow.to(tl.int64)
            n64 = n.to(tl.int64)
            g_off = _outer(n64 * sg_n + oh * sg_h + ow * sg_w, cs64 * sg_c, PC)
            gv = tl.load(g_e + g_off, mask=_outer_and(rmask, cmask, PC), other=0.0).to(tl.float32)
            ih = oh[None, :] * STRIDE - PAD + th[:, None] * DIL  # [T, P]
            iw = ow[None, :] * STRIDE - PAD + tw[:, None] * DIL
            tp_mask = tmask[:, None] & rmask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            tp_off = n64[None, :] * sx_n + ih * sx_h + iw * sx_w
            if PC:  # [T, P, C]
                xv = tl.load(
                    x_e + tp_off[:, :, None] + (cs64 * sx_c)[None, None, :],
                    mask=tp_mask[:, :, None] & cmask[None, None, :],
                    other=0.0,
                ).to(tl.float32)
            else:  # [T, C, P]
                xv = tl.load(
                    x_e + tp_off[:, None, :] + (cs64 * sx_c)[None, :, None],
                    mask=tp_mask[:, None, :] & cmask[None, :, None],
                    other=0.0,
                ).to(tl.float32)
            if RELU:
                xv = tl.where(xv > 0.0, xv, 0.0)
            if PC:
                acc += tl.sum(xv * gv[None, :, :], axis=1)
            else:
                acc += tl.sum(xv * gv[None, :, :], axis=2)
        kk = KSIZE * KSIZE
        dst = part_ptr + ((s * E + e) * C + cs64[None, :]) * kk + t[:, None]
        tl.store(dst, acc, mask=tmask[:, None] & cmask[None, :])


def _tiles(n_pix: int, c: int, channels_last: bool) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` of the forward / input-gradient tile (powers of two, at least 2), about
    ``_TILE`` elements, the contiguous dimension first filled: channels for channels-last, pixels for NCHW."""
    block = _common.pow2_block
    if channels_last:
        bc = block(c, 2, _MAX_BLOCK_C)
        bp = block(n_pix, 2, _TILE // bc)
    else:
        bp = block(n_pix, 2, _MAX_BLOCK_P)
        bc = block(c, 2, _TILE // bp)
    return bp, bc


def _tiles3(r: int, c: int, block_t: int, channels_last: bool) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` of the weight-gradient ``[BLOCK_T, BLOCK_P, BLOCK_C]`` tile (~``_TILE3``)."""
    block = _common.pow2_block
    if channels_last:
        bc = block(c, 2, _MAX_BLOCK_C)
        bp = block(r, 2, _TILE3 // (block_t * bc))
    else:
        bp = block(r, 2, min(_MAX_BLOCK_P, _TILE3 // (block_t * 2)))
        bc = block(c, 2, _TILE3 // (block_t * bp))
    return bp, bc


def _num_splits(r: int, programs: int, block_p: int) -> int:
    """Chunks the N*Ho*Wo reduction of the weight gradient is split into (``programs`` = E * channel
    blocks; :func:`fastnas.kernels._common.num_splits`); 1 under the interpreter."""
    return 1 if TRITON_INTERPRET else _common.num_splits(r, programs, block_p, _MAX_SPLITS, _TARGET_PROGRAMS)


def _span(t: Tensor) -> int:
    """Largest element offset inside one [C, H, W] sample of ``t`` (through its strides)."""
    return sum((t.shape[d] - 1) * abs(t.stride(d)) for d in (-3, -2, -1))


def _strides5(t: Tensor) -> tuple[int, ...]:
    """(e, n, c, h, w) strides; 0 along e for a 4-D (shared) tensor."""
    return tuple(t.stride()) if t.dim() == 5 else (0, *t.stride())


def _launch_forward(
    x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> Tensor:
    """Triton forward, reading ``x`` and ``weight`` through their strides."""
    e, c, k, _ = weight.shape
    n, h, w = x.shape[-4], x.shape[-2], x.shape[-1]
    _, _, _, ho, wo = shape = _out_shape(x, weight, stride, padding, dilation)
    cl = _channels_last(x)
    out = _empty(shape, x.device, x.dtype, channels_last=cl)
    bp, bc = _tiles(ho * wo, c, cl)
    n_pblk, n_cblk = triton.cdiv(ho * wo, bp), triton.cdiv(c, bc)
    off64 = max(_span(x), _span(out)) >= _INT32_SPAN
    _forward_kernel[(e * n * n_pblk * n_cblk,)](
        x, weight, out,
        n, c, h, w, ho, wo, padding,
        *_strides5(x), *weight.stride(), *out.stride(),
        n_pblk, n_cblk,
        KSIZE=k, STRIDE=stride, DIL=dilation, RELU=relu, PC=cl, OFF64=off64, BLOCK_P=bp, BLOCK_C=bc,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return out


def _launch_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    relu: bool,
    needs_x: bool = True,
    needs_w: bool = True,
) -> tuple[Tensor, Tensor]:
    """Triton backward: ``(grad_x, grad_weight)``, an empty tensor for a gradient not needed; every input
    is read through its strides."""
    e, c, k, _ = weight.shape
    n, h, w = x.shape[-4], x.shape[-2], x.shape[-1]
    ho, wo = grad_out.shape[-2], grad_out.shape[-1]
    cl = _channels_last(x)
    sg = tuple(grad_out.stride())
    off64 = max(_span(x), _span(grad_out)) >= _INT32_SPAN
    grad_x = (
        _launch_backward_input(grad_out, x, weight, stride, padding, dilation, relu, off64)
        if needs_x
        else x.new_empty((0,))
    )
    if not needs_w:
        return grad_x, weight.new_empty((0,))

    # Weight gradient: split reduction over the N*Ho*Wo output pixels into float32 partials.
    r = n * ho * wo
    block_t = _common.pow2_block(k * k, 2)
    bp3, bc3 = _tiles3(r, c, block_t, cl)
    n_cblk3 = triton.cdiv(c, bc3)
    chunk, splits = _common.split_chunks(r, _num_splits(r, e * n_cblk3, bp3), bp3)
    part = _empty((splits, e, c, k * k), x.device, torch.float32)
    _backward_weight_kernel[(e * n_cblk3, splits)](
        grad_out, x, part,
        e, n, c, h, w, ho, wo, padding, r, chunk,
        *sg, *_strides5(x),
        n_cblk3,
        KSIZE=k, STRIDE=stride, DIL=dilation, RELU=relu, PC=cl, OFF64=off64,
        BLOCK_T=block_t, BLOCK_P=bp3, BLOCK_C=bc3,
    )  # fmt: skip
    grad_w = part.sum(dim=0).view(e, c, k, k).to(weight.dtype)
    return grad_x, grad_w


def _launch_backward_input(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    dilation: int,
    relu: bool,
    off64: bool,
) -> Tensor:
    """Input gradient: one program per tile of grad x; a shared x sums the E edges in the program."""
    e, c, k, _ = weight.shape
    n, h, w = x.shape[-4], x.shape[-2], x.shape[-1]
    ho, wo = grad_out.shape[-2], grad_out.shape[-1]
    cl = _channels_last(x)
    shared = x.dim() == 4
    grad_x = _empty(tuple(x.shape), x.device, x.dtype, channels_last=cl)
    bp, bc = _tiles(h * w, c, cl)
    n_pblk, n_cblk = triton.cdiv(h * w, bp), triton.cdiv(c, bc)
    groups = 1 if shared else e
    _backward_input_kernel[(groups * n * n_pblk * n_cblk,)](
        grad_out, x, weight, grad_x,
        n, c, h, w, ho, wo, padding, e if shared else 1,
        *tuple(grad_out.stride()), *_strides5(x), *weight.stride(), *_strides5(grad_x),
        n_pblk, n_cblk,
        KSIZE=k, STRIDE=stride, DIL=dilation, RELU=relu, PC=cl, OFF64=off64, BLOCK_P=bp, BLOCK_C=bc,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return grad_x


# --------------------------------------------------------------------------------------------------
# Registered operators
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastnas::relu_depthwise_conv", mutates_args=())
def _relu_depthwise_conv_op(
    x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> Tensor:
    """``out`` [E, N, C, Ho, Wo] of the module docstring; Triton where :func:`triton_supports`, else
    PyTorch."""
    if triton_supports(x.device, x.dtype):
        return _launch_forward(x, weight, stride, padding, dilation, relu)
    return _torch_forward(x, weight, stride, padding, dilation, relu)


@_relu_depthwise_conv_op.register_fake
def _relu_depthwise_conv_fake(
    x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> Tensor:
    return _like_x(_out_shape(x, weight, stride, padding, dilation), x)


@torch.library.custom_op("fastnas::relu_depthwise_conv_backward", mutates_args=())
def _relu_depthwise_conv_backward_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool,
    needs_x: bool = True, needs_w: bool = True,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(grad_x, grad_weight)``: grad_x in ``x``'s shape (edges summed for a shared x), grad_weight
    [E, C, k, k] contiguous; an empty tensor for a gradient not needed (its kernel does not run)."""
    if triton_supports(x.device, x.dtype):
        return _launch_backward(
            grad_out.to(x.dtype), x, weight, stride, padding, dilation, relu, needs_x, needs_w
        )
    grad_x, grad_w = _torch_backward(grad_out, x, weight, stride, padding, dilation, relu)
    return (grad_x if needs_x else x.new_empty((0,))), (grad_w if needs_w else weight.new_empty((0,)))


@_relu_depthwise_conv_backward_op.register_fake
def _relu_depthwise_conv_backward_fake(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool,
    needs_x: bool = True, needs_w: bool = True,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    grad_x = _like_x(tuple(x.shape), x) if needs_x else x.new_empty((0,))
    grad_w = (
        torch.empty_like(weight, memory_format=torch.contiguous_format) if needs_w else weight.new_empty((0,))
    )
    return grad_x, grad_w


def _setup_context(ctx, inputs, output) -> None:
    x, weight, stride, padding, dilation, relu = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation, relu)
    ctx.nodes = (_common.grad_node(x), _common.grad_node(weight))


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    wanted = zip(ctx.needs_input_grad[:2], ctx.nodes, strict=True)
    needs_x, needs_w = (_common.grad_wanted(bool(n), node) for n, node in wanted)
    if not (needs_x or needs_w):
        return None, None, None, None, None, None
    grad_x, grad_w = torch.ops.fastnas.relu_depthwise_conv_backward(
        grad_out, x, weight, *ctx.conv, needs_x, needs_w
    )
    return (grad_x if needs_x else None), (grad_w if needs_w else None), None, None, None, None


_relu_depthwise_conv_op.register_autograd(_backward, setup_context=_setup_context)


def relu_depthwise_conv(
    x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, dilation: int = 1, relu: bool = True
) -> Tensor:
    """``F.conv2d(relu(x_e), weight[e].unsqueeze(1), stride, padding, dilation, groups=C)`` for every edge
    e, fused (the ReLU and depthwise conv of DARTS SepConv/DilConv).

    Args:
        x: [N, C, H, W] input shared by all E edges leaving one node, or [E, N, C, H, W], one per edge;
            NCHW or channels-last, read through its strides.
        weight: [E, C, k, k] depthwise filters, one per edge, in ``x``'s dtype.
        stride, padding, dilation: as ``F.conv2d`` (symmetric, the same along H and W).
        relu: apply ReLU to ``x`` first (``False``: a plain batched depthwise conv).

    Returns:
        [E, N, C, Ho, Wo] in ``x``'s dtype; channels-last per edge when ``x`` is channels-last.
        Differentiable in ``x`` and ``weight``.

    Uses the Triton operator when :func:`fastnas.kernels._common.use_kernels` allows, else
    :func:`relu_depthwise_conv_reference`.
    """
    _check_args(x, weight, stride, padding, dilation, relu)
    if _common.use_kernels(x):
        return torch.ops.fastnas.relu_depthwise_conv(x, weight, stride, padding, dilation, relu)
    return relu_depthwise_conv_reference(x, weight, stride, padding, dilation, relu)
