"""ReLU fused into a depthwise convolution, batched over the E edges that leave one node of a DARTS cell
(the first two layers of SepConv and DilConv: ``ReLU -> Conv(k, stride s, padding p, dilation d,
groups=C)``, k in 3/5/7, s and d in 1/2).

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
from fastnas.kernels._common import (
    FLOAT_DTYPES as _FLOAT_DTYPES,
)
from fastnas.kernels._common import (
    HAS_TRITON,
    KERNEL_DTYPES,
    TRITON_IMPORT_ERROR,
    TRITON_INTERPRET,
    tl,
    triton,
    triton_supports,
    use_kernels,
)
from fastnas.kernels._common import (
    acc_dtype as _acc_dtype,
)
from torch import Tensor

__all__ = [
    "HAS_TRITON",
    "KERNEL_DTYPES",
    "TRITON_IMPORT_ERROR",
    "output_size",
    "relu_depthwise_conv",
    "relu_depthwise_conv_reference",
    "triton_supports",
]


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
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{name}: `x` must be [N, C, H, W] (one input shared by all edges) or [E, N, C, H, W] "
            f"(one input per edge), got {shape}."
        )
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{name}: `weight` must be [E, C, k, k] (one depthwise filter per edge), got {shape}."
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: `x` must be float32, float64, bfloat16 or float16, got {x.dtype}.")
    if weight.dtype != x.dtype:
        raise TypeError(
            f"{name}: `weight` has dtype {weight.dtype} but `x` has {x.dtype}; cast one of them "
            f"(under autocast, cast the weight to the activation dtype)."
        )
    if weight.device != x.device:
        raise ValueError(
            f"{name}: `weight` is on {weight.device} but `x` is on {x.device}; move one of them."
        )
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


def _layout_empty(shape: tuple[int, ...], x: Tensor, dtype: torch.dtype, channels_last: bool) -> Tensor:
    """``torch.empty`` of ``shape`` (C at dim -3) on ``x``'s device; C innermost when ``channels_last``."""
    if not channels_last:
        return torch.empty(shape, device=x.device, dtype=dtype)
    d = len(shape)
    lead = list(range(d - 3))
    perm = [*lead, d - 2, d - 1, d - 3]  # [..., H, W, C]
    inverse = [*lead, d - 1, d - 3, d - 2]
    return torch.empty([shape[i] for i in perm], device=x.device, dtype=dtype).permute(inverse)


def _empty(shape: tuple[int, ...], x: Tensor, dtype: torch.dtype, channels_last: bool = False) -> Tensor:
    """Allocates a buffer every element of which a kernel writes (tests replace it with a NaN fill)."""
    return _layout_empty(shape, x, dtype, channels_last)


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
    acc = _acc_dtype(x.dtype)
    ref = _reference_math(x.to(acc), weight.to(acc), stride, padding, dilation, relu)
    out = _layout_empty(_out_shape(x, weight, stride, padding, dilation), x, x.dtype, _channels_last(x))
    return out.copy_(ref)


def _torch_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> tuple[Tensor, Tensor]:
    acc = _acc_dtype(x.dtype)
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
    grad_x = _layout_empty(tuple(x.shape), x, x.dtype, _channels_last(x)).copy_(grad_r)
    return grad_x, torch.stack(grad_ws).to(weight.dtype)


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
    def _forward_kernel(
        x_ptr,
        w_ptr,
        out_ptr,
        N,
        C,
        H,
        W,
        HO,
        WO,
        PAD,
        sx_e,
        sx_n,
        sx_c,
        sx_h,
        sx_w,
        sw_e,
        sw_c,
        sw_h,
        sw_w,
        so_e,
        so_n,
        so_c,
        so_h,
        so_w,
        N_PBLK,
        N_CBLK,
        KSIZE: tl.constexpr,
        STRIDE: tl.constexpr,
        DIL: tl.constexpr,
        RELU: tl.constexpr,
        PC: tl.constexpr,
        OFF64: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """Program ((e*N + n)*N_PBLK + pblk)*N_CBLK + cblk: one pixels x channels tile of out[e, n]."""
        pid = tl.program_id(0)
        cblk = pid % N_CBLK
        rest = pid // N_CBLK
        pblk = rest % N_PBLK
        en = rest // N_PBLK
        e = (en // N).to(tl.int64)
        n = (en % N).to(tl.int64)
        p = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
        cs = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = p < HO * WO
        cmask = cs < C
        if OFF64:
            p = p.to(tl.int64)
            cs = cs.to(tl.int64)
        oh = p // WO
        ow = p - oh * WO
        ih0 = oh * STRIDE - PAD
        iw0 = ow * STRIDE - PAD
        x_c = x_ptr + e * sx_e + n * sx_n + _chan(cs * sx_c, PC)
        w_c = w_ptr + e * sw_e + cs * sw_c
        if PC:
            acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for th in range(KSIZE):  # rolled loops: unrolled KSIZE^2 taps hoist their loads and spill
            ih = ih0 + th * DIL
            hmask = pmask & (ih >= 0) & (ih < H)
            for tw in range(KSIZE):
                iw = iw0 + tw * DIL
                m = _outer_and(hmask & (iw >= 0) & (iw < W), cmask, PC)
                pix = ih * sx_h + iw * sx_w
                if PC:
                    xv = tl.load(x_c + pix[:, None], mask=m, other=0.0).to(tl.float32)
                else:
                    xv = tl.load(x_c + pix[None, :], mask=m, other=0.0).to(tl.float32)
                if RELU:
                    xv = tl.where(xv > 0.0, xv, 0.0)
                wv = tl.load(w_c + th * sw_h + tw * sw_w, mask=cmask, other=0.0).to(tl.float32)
                acc += xv * _chan(wv, PC)
        o = out_ptr + e * so_e + n * so_n + _outer(oh * so_h + ow * so_w, cs * so_c, PC)
        tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=_outer_and(pmask, cmask, PC))

    @triton.jit
    def _backward_input_kernel(
        g_ptr,
        x_ptr,
        w_ptr,
        gx_ptr,
        N,
        C,
        H,
        W,
        HO,
        WO,
        PAD,
        NE,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        sx_e,
        sx_n,
        sx_c,
        sx_h,
        sx_w,
        sw_e,
        sw_c,
        sw_h,
        sw_w,
        sgx_e,
        sgx_n,
        sgx_c,
        sgx_h,
        sgx_w,
        N_PBLK,
        N_CBLK,
        KSIZE: tl.constexpr,
        STRIDE: tl.constexpr,
        DIL: tl.constexpr,
        RELU: tl.constexpr,
        PC: tl.constexpr,
        OFF64: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """Program ((q*N + n)*N_PBLK + pblk)*N_CBLK + cblk: one tile of grad x[q, n] (q = 0 for shared x),
        summing edges q .. q + NE - 1 (NE = E for shared x, 1 per edge)."""
        pid = tl.program_id(0)
        cblk = pid % N_CBLK
        rest = pid // N_CBLK
        pblk = rest % N_PBLK
        qn = rest // N_PBLK
        q = (qn // N).to(tl.int64)
        n = (qn % N).to(tl.int64)
        p = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
        cs = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = p < H * W
        cmask = cs < C
        if OFF64:
            p = p.to(tl.int64)
            cs = cs.to(tl.int64)
        ih = p // W
        iw = p - ih * W
        if PC:
            acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
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
                    pix = oh * sg_h + ow * sg_w
                    if PC:
                        gv = tl.load(g_c + pix[:, None], mask=m, other=0.0).to(tl.float32)
                    else:
                        gv = tl.load(g_c + pix[None, :], mask=m, other=0.0).to(tl.float32)
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
        g_ptr,
        x_ptr,
        part_ptr,
        E,
        N,
        C,
        H,
        W,
        HO,
        WO,
        PAD,
        R,
        CHUNK,
        sg_e,
        sg_n,
        sg_c,
        sg_h,
        sg_w,
        sx_e,
        sx_n,
        sx_c,
        sx_h,
        sx_w,
        N_CBLK,
        KSIZE: tl.constexpr,
        STRIDE: tl.constexpr,
        DIL: tl.constexpr,
        RELU: tl.constexpr,
        PC: tl.constexpr,
        OFF64: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
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


def _np2(v: int) -> int:
    """Next power of two, at least 2 (the smallest block the kernels use)."""
    return max(2, 1 << max(0, int(v) - 1).bit_length())


def _tiles(n_pix: int, c: int, channels_last: bool) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` of the forward / input-gradient tile, about ``_TILE`` elements, the
    contiguous dimension first filled: channels for channels-last, pixels for NCHW."""
    if channels_last:
        bc = min(_np2(c), _MAX_BLOCK_C)
        bp = min(_np2(n_pix), max(2, _TILE // bc))
    else:
        bp = min(_np2(n_pix), _MAX_BLOCK_P)
        bc = min(_np2(c), max(2, _TILE // bp))
    return bp, bc


def _tiles3(r: int, c: int, block_t: int, channels_last: bool) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` of the weight-gradient ``[BLOCK_T, BLOCK_P, BLOCK_C]`` tile (~``_TILE3``)."""
    if channels_last:
        bc = min(_np2(c), _MAX_BLOCK_C)
        bp = min(_np2(r), max(2, _TILE3 // (block_t * bc)))
    else:
        bp = min(_np2(r), max(2, min(_MAX_BLOCK_P, _TILE3 // (block_t * 2))))
        bc = min(_np2(c), max(2, _TILE3 // (block_t * bp)))
    return bp, bc


def _num_splits(r: int, programs: int, block_p: int) -> int:
    """Chunks the N*Ho*Wo reduction of the weight gradient is split into: enough that ``programs``
    (E * channel blocks) times the count fills a GPU, each chunk still a few blocks; 1 under the
    interpreter."""
    if TRITON_INTERPRET:
        return 1
    by_size = max(1, r // (4 * block_p))
    by_occupancy = max(1, -(-_TARGET_PROGRAMS // max(programs, 1)))
    return int(max(1, min(by_size, by_occupancy, _MAX_SPLITS)))


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
    out = _empty(shape, x, x.dtype, cl)
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
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> tuple[Tensor, Tensor]:
    """Triton backward: ``(grad_x, grad_weight)``; every input is read through its strides."""
    e, c, k, _ = weight.shape
    n, h, w = x.shape[-4], x.shape[-2], x.shape[-1]
    ho, wo = grad_out.shape[-2], grad_out.shape[-1]
    cl = _channels_last(x)
    shared = x.dim() == 4
    grad_x = _empty(tuple(x.shape), x, x.dtype, cl)
    sg = tuple(grad_out.stride())

    # Input gradient: one program per tile of grad x; a shared x sums the E edges in the program.
    bp, bc = _tiles(h * w, c, cl)
    n_pblk, n_cblk = triton.cdiv(h * w, bp), triton.cdiv(c, bc)
    groups = 1 if shared else e
    off64 = max(_span(x), _span(grad_out)) >= _INT32_SPAN
    _backward_input_kernel[(groups * n * n_pblk * n_cblk,)](
        grad_out, x, weight, grad_x,
        n, c, h, w, ho, wo, padding, e if shared else 1,
        *sg, *_strides5(x), *weight.stride(), *_strides5(grad_x),
        n_pblk, n_cblk,
        KSIZE=k, STRIDE=stride, DIL=dilation, RELU=relu, PC=cl, OFF64=off64, BLOCK_P=bp, BLOCK_C=bc,
        num_warps=_NUM_WARPS,
    )  # fmt: skip

    # Weight gradient: split reduction over the N*Ho*Wo output pixels into float32 partials.
    r = n * ho * wo
    block_t = _np2(k * k)
    bp3, bc3 = _tiles3(r, c, block_t, cl)
    n_cblk3 = triton.cdiv(c, bc3)
    splits = _num_splits(r, e * n_cblk3, bp3)
    chunk = triton.cdiv(triton.cdiv(r, splits), bp3) * bp3
    splits = triton.cdiv(r, chunk)
    part = _empty((splits, e, c, k * k), x, torch.float32)
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
    return _layout_empty(_out_shape(x, weight, stride, padding, dilation), x, x.dtype, _channels_last(x))


@torch.library.custom_op("fastnas::relu_depthwise_conv_backward", mutates_args=())
def _relu_depthwise_conv_backward_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_weight)``: grad_x in ``x``'s shape (edges summed for a shared x), grad_weight
    [E, C, k, k] contiguous."""
    if triton_supports(x.device, x.dtype):
        return _launch_backward(grad_out.to(x.dtype), x, weight, stride, padding, dilation, relu)
    return _torch_backward(grad_out, x, weight, stride, padding, dilation, relu)


@_relu_depthwise_conv_backward_op.register_fake
def _relu_depthwise_conv_backward_fake(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, relu: bool
) -> tuple[Tensor, Tensor]:
    grad_x = _layout_empty(tuple(x.shape), x, x.dtype, _channels_last(x))
    return grad_x, torch.empty(tuple(weight.shape), device=weight.device, dtype=weight.dtype)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, stride, padding, dilation, relu = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = (stride, padding, dilation, relu)


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_w = torch.ops.fastnas.relu_depthwise_conv_backward(grad_out, x, weight, *ctx.conv)
    return grad_x, grad_w, None, None, None, None


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
    if use_kernels(x):
        return torch.ops.fastnas.relu_depthwise_conv(x, weight, stride, padding, dilation, relu)
    return relu_depthwise_conv_reference(x, weight, stride, padding, dilation, relu)
