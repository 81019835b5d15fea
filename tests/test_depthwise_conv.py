"""fastnas.kernels.depthwise_conv: the Triton ReLU + depthwise convolution batched over edges, against its
reference.

The reference (``F.relu`` + ``F.conv2d(groups=C)`` per edge) is checked against an independent float64
formula (zero padding and strided slices, differentiated by autograd) and by gradcheck; the kernel path
(Triton; on a CPU-only machine in the interpreter, TRITON_INTERPRET=1 set by conftest.py) is checked
against the reference for the output and the gradients of x and weight, over kernel 3/5/7, stride 1/2,
dilation 1/2, NCHW and channels-last, shared and per-edge inputs. Shapes are tiny: every interpreted
launch costs milliseconds per program and tap.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import (
    BF16,
    DEVICE,
    F32_SUMS,
    F64,
    channels_last,
    check_reference_switch,
    close_all,
    compile_and_reference,
    count_launches,
    fresh_leaves,
    needs_kernels,
    per_edge_strides,
    poisoned_fixture,
    record_kernel_launches,
)

from fastnas.kernels import depthwise_conv as dc
from fastnas.kernels.depthwise_conv import output_size, relu_depthwise_conv, relu_depthwise_conv_reference

N, C, H, W = 2, 3, 7, 9  # odd, non-square spatial size
NAMES = ("out", "grad x", "grad weight")


def make(e, k, stride, padding, dilation, shared, cl=False, dtype=torch.float32, shape=(N, C, H, W), seed=0):
    """Random non-zero inputs x (about half negative, so ReLU matters), weight and output gradient."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn((n, c, h, w) if shared else (e, n, c, h, w), generator=gen)
    weight = torch.randn(e, c, k, k, generator=gen)
    ho, wo = output_size(h, k, stride, padding, dilation), output_size(w, k, stride, padding, dilation)
    g = torch.randn(e, n, c, ho, wo, generator=gen)
    x = x.to(device=DEVICE, dtype=dtype)
    if cl:
        x = channels_last(x)
    return x, weight.to(device=DEVICE, dtype=dtype), g.to(device=DEVICE, dtype=dtype)


def truth(x, weight, stride, padding, dilation, relu):
    """Independent float64 formula: zero-pad, then for every tap a strided slice times the tap weight."""
    x = x.double()
    weight = weight.double()
    r = x.clamp_min(0) if relu else x
    e, _, k, _ = weight.shape
    if r.dim() == 4:
        r = r.unsqueeze(0).expand(e, *r.shape)
    ho = output_size(x.shape[-2], k, stride, padding, dilation)
    wo = output_size(x.shape[-1], k, stride, padding, dilation)
    rp = F.pad(r, (padding, padding, padding, padding))
    out = 0
    for th in range(k):
        for tw in range(k):
            hs, ws = th * dilation, tw * dilation
            patch = rp[
                ..., hs : hs + stride * (ho - 1) + 1 : stride, ws : ws + stride * (wo - 1) + 1 : stride
            ]
            out = out + weight[:, None, :, th, tw, None, None] * patch
    return out


def run(fn, x, weight, g, *conv):
    """Forward and backward of ``fn``; returns (out, grad x, grad weight)."""
    x, weight = fresh_leaves(x, weight)
    out = fn(x, weight, *conv)
    out.backward(g)
    return out.detach(), x.grad, weight.grad


# --------------------------------------------------------------------------------------------------
# Reference path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "e,k,stride,padding,dilation,shared,relu",
    [(3, 3, 2, 1, 1, True, True), (2, 5, 1, 4, 2, False, False), (1, 7, 2, 3, 1, False, True)],
)
def test_reference_matches_slicing_formula(e, k, stride, padding, dilation, shared, relu):
    """Output and both gradients (float64) of the reference against autograd through :func:`truth`."""
    conv = (stride, padding, dilation, relu)
    x, weight, g = make(e, k, stride, padding, dilation, shared, dtype=torch.float64)
    x, weight, g = x.cpu(), weight.cpu(), g.cpu()
    got = run(relu_depthwise_conv_reference, x, weight, g, *conv)
    want = run(truth, x, weight, g, *conv)
    assert got[0].shape == want[0].shape == g.shape
    close_all(got, want, NAMES, exact=True, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_reference_gradcheck_float64(shared):
    x, weight, _ = make(2, 3, 2, 1, 2, shared, dtype=torch.float64, shape=(1, 2, 5, 4))
    x, weight = x.cpu().requires_grad_(True), weight.cpu().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: relu_depthwise_conv_reference(a, b, 2, 1, 2), (x, weight))


def test_argument_errors():
    x, weight, _ = make(3, 3, 1, 1, 1, True)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        relu_depthwise_conv(x[0], weight)
    with pytest.raises(ValueError, match=r"\[E, C, k, k\]"):
        relu_depthwise_conv(x, weight[0])
    with pytest.raises(ValueError, match="square"):
        relu_depthwise_conv(x, weight[..., :2])
    with pytest.raises(ValueError, match="channels"):
        relu_depthwise_conv(x, weight[:, :2])
    with pytest.raises(ValueError, match="per-edge"):
        relu_depthwise_conv(x.expand(2, *x.shape), weight)
    with pytest.raises(TypeError, match="dtype"):
        relu_depthwise_conv(x, weight.double())
    with pytest.raises(TypeError, match="float32"):
        relu_depthwise_conv(x.long(), weight.long())
    with pytest.raises(ValueError, match="stride"):
        relu_depthwise_conv(x, weight, stride=0)
    with pytest.raises(ValueError, match="dilation"):
        relu_depthwise_conv(x, weight, dilation=0)
    with pytest.raises(ValueError, match="padding"):
        relu_depthwise_conv(x, weight, padding=-1)
    with pytest.raises(TypeError, match="int"):
        relu_depthwise_conv(x, weight, stride=1.0)
    with pytest.raises(ValueError, match="empty"):
        relu_depthwise_conv(x, weight, dilation=4)  # 7x9 input, effective kernel 9, no padding
    with pytest.raises(ValueError, match="empty"):
        relu_depthwise_conv(x[:0], weight)
    with pytest.raises(ValueError, match="meta"):
        relu_depthwise_conv(x, weight.to("meta"))


def test_torch_math_of_the_operators_float64():
    """float64 is not a kernel dtype: the operators compute with PyTorch ops (their fallback), autograd
    through the backward operator; they must agree with autograd through the reference, and lay out
    ``out`` and ``grad x`` as the kernels do."""
    for shared in (True, False):
        x, weight, g = make(3, 3, 2, 1, 1, shared, cl=True, dtype=torch.float64)
        conv = (2, 1, 1, True)
        got = run(torch.ops.fastnas.relu_depthwise_conv, x, weight, g, *conv)
        want = run(relu_depthwise_conv_reference, x, weight, g, *conv)
        close_all(got, want, NAMES, exact=True, **F64)
        assert got[0].stride() == per_edge_strides(got[0].shape, channels_last=True)
        assert got[1].stride() == x.stride()


def test_fake_shapes_and_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for shared in (True, False):
            for cl in (True, False):
                x = torch.empty((2, 4, 7, 9) if shared else (3, 2, 4, 7, 9), dtype=torch.bfloat16)
                x = channels_last(x) if cl else x
                weight = torch.empty(3, 4, 5, 5, dtype=torch.bfloat16)
                out = torch.ops.fastnas.relu_depthwise_conv(x, weight, 2, 2, 1, True)
                assert out.shape == (3, 2, 4, 4, 5) and out.dtype == torch.bfloat16
                assert out.stride() == per_edge_strides((3, 2, 4, 4, 5), cl)
                gx, gw = torch.ops.fastnas.relu_depthwise_conv_backward(out, x, weight, 2, 2, 1, True)
                assert gx.shape == x.shape and gx.stride() == x.stride() and gx.dtype == torch.bfloat16
                assert gw.shape == weight.shape and gw.is_contiguous()


# --------------------------------------------------------------------------------------------------
# Kernel path against the reference
# --------------------------------------------------------------------------------------------------

CASES = [  # e, k, stride, padding, dilation, shared, channels-last, relu
    (3, 3, 1, 1, 1, True, False, True),  # sep_conv_3x3, three edges from one node
    (3, 3, 2, 1, 1, False, True, True),  # reduction cell, per-edge inputs
    (1, 5, 1, 4, 2, False, False, False),  # dil_conv_5x5, no ReLU
    (2, 5, 2, 2, 1, True, True, True),  # sep_conv_5x5, stride 2
    (1, 7, 1, 3, 1, False, True, True),
    (2, 7, 2, 3, 2, True, False, False),  # output 1x2
    (3, 3, 2, 0, 2, False, False, True),  # no padding, stride and dilation 2
    (1, 3, 1, 2, 2, True, True, True),  # dil_conv_3x3
]


@needs_kernels
@pytest.mark.parametrize("e,k,stride,padding,dilation,shared,cl,relu", CASES)
def test_kernel_matches_reference_fp32(e, k, stride, padding, dilation, shared, cl, relu):
    conv = (stride, padding, dilation, relu)
    x, weight, g = make(e, k, stride, padding, dilation, shared, cl=cl, seed=k + stride + dilation)
    out, gx, gw = run(relu_depthwise_conv, x, weight, g, *conv)
    r_out, r_gx, r_gw = run(relu_depthwise_conv_reference, x, weight, g, *conv)
    assert out.shape == r_out.shape == g.shape and out.dtype == torch.float32
    assert out.stride() == per_edge_strides(out.shape, cl)
    assert gx.shape == x.shape and gx.stride() == x.stride()
    assert gw.shape == weight.shape and gw.dtype == weight.dtype
    close_all((out, gx, gw), (r_out, r_gx, r_gw), NAMES, **F32_SUMS)


@needs_kernels
@pytest.mark.parametrize(
    "e,k,stride,padding,dilation,shared,cl",
    [(3, 3, 1, 1, 1, True, True), (2, 5, 2, 4, 2, False, False)],
)
def test_kernel_matches_reference_bf16(e, k, stride, padding, dilation, shared, cl):
    """bf16 inputs against the reference in fp32 on the same (bf16-representable) values."""
    conv = (stride, padding, dilation, True)
    x, weight, g = make(e, k, stride, padding, dilation, shared, cl=cl, dtype=torch.bfloat16, seed=3)
    out, gx, gw = run(relu_depthwise_conv, x, weight, g, *conv)
    r_out, r_gx, r_gw = run(relu_depthwise_conv_reference, x.float(), weight.float(), g.float(), *conv)
    assert out.dtype == gx.dtype == gw.dtype == torch.bfloat16
    close_all((out, gx, gw), (r_out, r_gx, r_gw), NAMES, **BF16)


poisoned = poisoned_fixture(dc)  # every buffer the launchers allocate starts as NaN


@needs_kernels
@pytest.mark.parametrize("shared,cl", [(True, False), (False, True)])
def test_kernel_poisoned_buffers_small_tiles_split_reduction(poisoned, monkeypatch, shared, cl):
    """Tiles of 8 pixels x 2 channels (several pixel and channel blocks, partial last blocks) and a
    weight-gradient reduction split into 3 chunks (the GPU's split; the last chunk partial), with
    NaN-poisoned outputs and partial-sum buffers."""
    monkeypatch.setattr(dc, "_TILE", 16)
    monkeypatch.setattr(dc, "_TILE3", 32)
    monkeypatch.setattr(dc, "_MAX_BLOCK_C", 2)
    monkeypatch.setattr(dc, "_MAX_BLOCK_P", 8)
    monkeypatch.setattr(dc, "_num_splits", lambda r, programs, block_p: 3)
    conv = (2, 1, 1, True)  # 5x5 -> 3x3: N*Ho*Wo = 9 in chunks of 4, 4, 1
    x, weight, g = make(2, 3, *conv[:3], shared, cl=cl, shape=(1, 3, 5, 5), seed=11)
    got = run(relu_depthwise_conv, x, weight, g, *conv)
    want = run(relu_depthwise_conv_reference, x, weight, g, *conv)
    close_all(got, want, NAMES, **F32_SUMS)


@needs_kernels
def test_kernel_arbitrary_strides(monkeypatch):
    """A non-dense x (a channel slice of a wider channels-last tensor), a transposed weight view and an
    expanded (stride-0) incoming gradient are read through their strides; the int64 in-sample offsets
    (used for samples spanning 2**31 elements) are forced on."""
    monkeypatch.setattr(dc, "_INT32_SPAN", 1)
    gen = torch.Generator().manual_seed(5)
    wide = channels_last(torch.randn(2, 2 * C, H, W, generator=gen)).to(DEVICE)
    x = wide[:, 1 : 1 + C]
    weight = torch.randn(2, 3, 3, C, generator=gen).to(DEVICE).permute(0, 3, 1, 2)
    assert not x.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    conv = (1, 1, 1, True)
    g = torch.randn(1, 1, C, 1, W, generator=gen).to(DEVICE).expand(2, N, C, H, W)
    got = run(relu_depthwise_conv, x, weight, g, *conv)
    want = run(relu_depthwise_conv_reference, x, weight, g, *conv)
    assert got[1].shape == x.shape
    close_all(got, want, NAMES, **F32_SUMS)


# --------------------------------------------------------------------------------------------------
# Dispatch, reference switch, torch.compile, opcheck
# --------------------------------------------------------------------------------------------------


@needs_kernels
def test_reference_switch_skips_the_kernels(monkeypatch):
    conv = (1, 1, 1, True)
    x, weight, g = make(2, 3, *conv[:3], True, shape=(1, 2, 4, 5))
    forced, fused = check_reference_switch(
        monkeypatch, dc, lambda: run(relu_depthwise_conv, x, weight, g, *conv)
    )
    close_all(forced, fused, NAMES, **F32_SUMS)


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op(monkeypatch):
    calls = count_launches(monkeypatch, dc)
    conv = (2, 1, 1, True)
    x, weight, g = make(2, 3, *conv[:3], True, cl=True, shape=(1, 2, 5, 4))

    def step(x, weight, *conv):
        return relu_depthwise_conv(x, weight, *conv) * 2.0

    _, got, want = compile_and_reference(step, lambda fn: run(fn, x, weight, g, *conv), calls)
    close_all(got, want, NAMES, **F32_SUMS)


@needs_kernels
def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of both
    operators on the kernel path (tiny shapes; each check runs the interpreted kernels a few times)."""
    x, weight, g = make(2, 3, 2, 1, 1, True, cl=True, shape=(1, 2, 5, 4))
    x, weight = x.requires_grad_(True), weight.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastnas.relu_depthwise_conv.default, (x, weight, 2, 1, 1, True))
    xe, _, _ = make(2, 3, 2, 1, 1, False, shape=(1, 2, 5, 4))
    torch.library.opcheck(
        torch.ops.fastnas.relu_depthwise_conv_backward.default, (g, xe, weight.detach(), 2, 1, 1, False)
    )


@needs_kernels
def test_backward_skips_the_gradients_a_pass_does_not_ask_for(monkeypatch):
    """``backward(inputs=[x])`` (DARTS' architecture step asks for the alphas only) runs the input-gradient
    kernel only, and the gradient it gives equals the full backward's; asking for the weight only runs the
    weight kernel only."""
    x, weight, g = make(2, 3, 1, 1, 1, True, seed=4)
    launched = record_kernel_launches(monkeypatch, dc, "_backward_input_kernel", "_backward_weight_kernel")

    def loss(x_leaf, w_leaf):
        # the weight reaches the op through another op (as the fast executor's packed weights do)
        return (relu_depthwise_conv(x_leaf * 1.0, w_leaf * 1.0, 1, 1, 1) * g).sum()

    full_x = x.clone().requires_grad_(True)
    full_w = weight.clone().requires_grad_(True)
    loss(full_x, full_w).backward()
    assert sorted(launched) == ["_backward_input_kernel", "_backward_weight_kernel"]
    for wanted, kernel in ((0, "_backward_input_kernel"), (1, "_backward_weight_kernel")):
        launched.clear()
        leaves = (x.clone().requires_grad_(True), weight.clone().requires_grad_(True))
        loss(*leaves).backward(inputs=[leaves[wanted]])
        assert launched == [kernel]
        assert leaves[1 - wanted].grad is None
        torch.testing.assert_close(leaves[wanted].grad, (full_x, full_w)[wanted].grad, rtol=0, atol=0)
