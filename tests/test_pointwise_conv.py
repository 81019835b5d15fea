"""fastnas.kernels.pointwise_conv: the Triton 1x1 convolution with BN statistics in its epilogue against
its reference.

The reference (einsum + sums) is checked against float64 ``F.conv2d`` per edge and by gradcheck; the
operator's own backward (PyTorch math for float64) by gradcheck; the kernel path (Triton; on a CPU-only
machine in the interpreter, TRITON_INTERPRET=1 set by conftest.py) against the reference for ``out``,
``total``, ``total_sq``, ``shift``, the BN mean and variance they give, and the gradients of ``x`` and
``weight``, for NCHW and channels-last, shared and per-edge inputs, channel counts that are not multiples
of 16 and odd spatial sizes; and the shifted sums against the one-pass formula on conv outputs with a large
mean and a small spread. The Triton backward (grad x, split grad weight and the sum of its partials) also
for every subset of the outputs a loss uses (the others' gradients arrive as None), expanded (stride-0)
gradients, small tiles with a split reduction, and bf16. Shapes are tiny: every interpreted launch costs
milliseconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import (
    BF16,
    DEVICE,
    F32,
    F32_SUMS,
    F64,
    channels_last,
    check_reference_switch,
    close,
    close_all,
    close_scaled,
    compile_and_reference,
    count_launches,
    fresh_leaves,
    needs_kernels,
    per_edge_is_channels_last,
    poisoned_fixture,
    record_kernel_launches,
)

from fastnas.kernels import pointwise_conv as pc
from fastnas.kernels.pointwise_conv import (
    batch_norm_from_stats,
    pointwise_conv_stats,
    pointwise_conv_stats_reference,
)

EPS = 1e-5
STATS = {"rtol": 1e-5, "atol": 1e-4}  # fp32 sums over N*H*W of fp32 values, in another order


def make(
    e=3,
    n=2,
    c_in=16,
    c_out=24,
    h=5,
    w=7,
    shared=True,
    cl=False,
    dtype=torch.float32,
    seed=0,
    device=DEVICE,
):
    """Random non-zero inputs (x with a per-channel offset, so the sums are not ~0) and output grads."""
    gen = torch.Generator().manual_seed(seed)
    xshape = (n, c_in, h, w) if shared else (e, n, c_in, h, w)
    x = torch.randn(xshape, generator=gen) + 0.5 * torch.randn(c_in, 1, 1, generator=gen)
    weight = torch.randn(e, c_out, c_in, generator=gen) / c_in**0.5
    grads = (
        torch.randn(e, n, c_out, h, w, generator=gen),
        torch.randn(e, c_out, generator=gen),
        0.1 * torch.randn(e, c_out, generator=gen),
    )
    x = x.to(device=device, dtype=dtype)
    if cl:
        x = channels_last(x)
    weight = weight.to(device=device, dtype=dtype)
    grads = (grads[0].to(device=device, dtype=dtype), grads[1].to(device), grads[2].to(device))
    return x, weight, grads


def shifted_sums(out, shift):
    """float64 sum and sum of squares of ``out - shift`` over (N, H, W): the kernel's definition."""
    d = out.double().cpu() - shift.double().cpu()[:, None, :, None, None]
    return d.sum(dim=(1, 3, 4)), (d * d).sum(dim=(1, 3, 4))


def moments(out, total, total_sq, shift):
    """Per-channel (mean, biased variance) from the shifted sums, float64 (as batch_norm_from_stats)."""
    count = out.shape[1] * out.shape[3] * out.shape[4]
    d = total.double().cpu() / count
    return shift.double().cpu() + d, total_sq.double().cpu() / count - d * d


def invariants(out, total, total_sq, shift):
    """``(out, mean, var)`` as differentiable functions of the outputs that do not depend on the shift
    (``total`` and ``total_sq`` alone do, through a value of ``out`` the gradient treats as a constant), for
    gradcheck: ``mean = shift + total / count``, ``var = total_sq / count - (total / count)^2``."""
    count = out.shape[1] * out.shape[3] * out.shape[4]
    d = total / count
    return out, shift + d, total_sq / count - d * d


def truth(x, weight):
    """Independent float64 formula on the CPU: ``F.conv2d`` with a 1x1 kernel per edge."""
    xd, wd = x.detach().double().cpu(), weight.detach().double().cpu()
    outs = [F.conv2d(xd if x.dim() == 4 else xd[i], wd[i][:, :, None, None]) for i in range(wd.shape[0])]
    return torch.stack(outs)


def run(fn, x, weight, grads):
    """Forward and backward of ``fn``; returns (out, total, total_sq, shift) and the gradients of x and
    weight (``shift`` is not differentiable: ``grads`` has three entries)."""
    x, weight = fresh_leaves(x, weight)
    outs = fn(x, weight)
    torch.autograd.backward(outs[: len(grads)], [g.to(o.dtype) for o, g in zip(outs, grads)])
    return tuple(o.detach() for o in outs), (x.grad, weight.grad)


# --------------------------------------------------------------------------------------------------
# Reference path and the operator's PyTorch math
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared,cl", [(True, False), (False, True)])
def test_reference_matches_float64_conv(shared, cl):
    x, weight, _ = make(shared=shared, cl=cl, device="cpu")
    out, total, total_sq, shift = pointwise_conv_stats_reference(x, weight)
    t_out = truth(x, weight)
    assert out.shape == (3, 2, 24, 5, 7) and out.dtype == torch.float32
    assert total.shape == total_sq.shape == shift.shape == (3, 24) and total.dtype == torch.float32
    assert per_edge_is_channels_last(out) == cl and out.is_contiguous() == (not cl)
    assert not shift.requires_grad
    close(out, t_out, **F32)
    close(shift, t_out[:, 0, :, 0, 0], **F32)
    t_total, t_total_sq = shifted_sums(t_out, shift)
    close(total, t_total, **STATS)
    close(total_sq, t_total_sq, **STATS)
    mean, var = moments(out, total, total_sq, shift)
    close(mean, t_out.mean(dim=(1, 3, 4)), **STATS)
    close(var, t_out.var(dim=(1, 3, 4), correction=0), **STATS)


@pytest.mark.parametrize("shared", [True, False])
def test_reference_gradcheck_float64(shared):
    x, weight, _ = make(e=2, n=2, c_in=3, c_out=2, h=2, w=3, shared=shared, dtype=torch.float64, device="cpu")
    assert torch.autograd.gradcheck(
        lambda *a: invariants(*pointwise_conv_stats_reference(*a)),
        (x.requires_grad_(), weight.requires_grad_()),
    )


@pytest.mark.parametrize("shared,cl", [(True, False), (False, True)])
def test_operator_torch_math_gradcheck_float64(shared, cl):
    """float64 is not a kernel dtype: the operator computes with PyTorch ops and differentiates through its
    own backward operator (the formula for g, the einsums, the sum over edges of a shared x)."""
    x, weight, _ = make(e=2, n=2, c_in=3, c_out=2, h=2, w=3, shared=shared, cl=cl, dtype=torch.float64)
    x, weight = x.cpu().requires_grad_(), weight.cpu().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: invariants(*torch.ops.fastnas.pointwise_conv_stats(*a)), (x, weight)
    )


def test_batch_norm_from_stats_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 2, 3, 2, 3, dtype=torch.float64, generator=gen) + 0.5
    shift = z[:, 0, :, 0, 0] + 0.1
    d = z - shift[:, None, :, None, None]
    total = d.sum(dim=(1, 3, 4)) + 0.1 * torch.randn(2, 3, dtype=torch.float64, generator=gen)
    total_sq = (d * d).sum(dim=(1, 3, 4)) + 0.1 * torch.rand(2, 3, dtype=torch.float64, generator=gen)
    leaves = tuple(t.detach().requires_grad_(True) for t in (z, total, total_sq))
    assert torch.autograd.gradcheck(lambda *a: batch_norm_from_stats(*a, shift.detach())[0], leaves)


def test_batch_norm_from_stats_matches_batch_norm_cpu_reference():
    """Reference conv -> batch_norm_from_stats equals F.batch_norm (training, no affine) of each edge's
    conv output, values, statistics and gradients (float64, so the check is tight)."""
    x, weight, (g, _, _) = make(shared=False, cl=True, dtype=torch.float64, device="cpu")
    check_bn_composition(pointwise_conv_stats_reference, x, weight, g, tol={"rtol": 1e-10, "atol": 1e-10})


def check_bn_composition(conv, x, weight, g, tol):
    def fused(x, weight):
        zhat, mean, var = batch_norm_from_stats(*conv(x, weight), eps=EPS)
        return zhat, mean, var

    def plain(x, weight):
        z = pointwise_conv_stats_reference(x, weight)[0]
        zhat = torch.stack(
            [F.batch_norm(z[i], None, None, training=True, momentum=0.0, eps=EPS) for i in range(z.shape[0])]
        )
        return zhat, z.mean(dim=(1, 3, 4)), z.var(dim=(1, 3, 4), correction=0)

    results = []
    for fn in (fused, plain):
        xl, wl = fresh_leaves(x, weight)
        zhat, mean, var = fn(xl, wl)
        zhat.backward(g)
        results.append((zhat.detach(), mean.detach(), var.detach(), xl.grad, wl.grad))
    (zhat, mean, var, gx, gw), (r_zhat, r_mean, r_var, r_gx, r_gw) = results
    assert zhat.dtype == x.dtype and not mean.requires_grad
    close_all(
        (zhat, mean, var, gx, gw),
        (r_zhat, r_mean, r_var, r_gx, r_gw),
        ("zhat", "mean", "var", "grad x", "grad weight"),
        **tol,
    )


def test_argument_errors():
    x, weight, _ = make(device="cpu")
    with pytest.raises(ValueError, match=r"\[N, C_in, H, W\]"):
        pointwise_conv_stats(x[0], weight)
    with pytest.raises(ValueError, match=r"\[E, C_out, C_in\]"):
        pointwise_conv_stats(x, weight[0])
    with pytest.raises(ValueError, match="C_in = 8 input channels but `x`"):
        pointwise_conv_stats(x, weight[:, :, :8])
    with pytest.raises(ValueError, match="inputs of 2 edges but `weight` has E = 3"):
        pointwise_conv_stats(torch.stack([x, x]), weight)
    with pytest.raises(TypeError, match="cast them to one dtype"):
        pointwise_conv_stats(x, weight.double())
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        pointwise_conv_stats(x.int(), weight)
    with pytest.raises(ValueError, match=r"`total` must be \[E, C\]"):
        batch_norm_from_stats(
            torch.zeros(3, 2, 4, 5, 5), torch.zeros(3, 5), torch.zeros(3, 4), torch.zeros(3, 4)
        )
    with pytest.raises(ValueError, match=r"`shift` must be \[E, C\]"):
        batch_norm_from_stats(
            torch.zeros(3, 2, 4, 5, 5), torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(4)
        )
    with pytest.raises(ValueError, match=r"`z` must be \[E, N, C, H, W\]"):
        batch_norm_from_stats(
            torch.zeros(2, 4, 5, 5), torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4)
        )


def test_fake_shapes_dtypes_and_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 16, 5, 7, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight = torch.empty(3, 24, 16, dtype=torch.bfloat16)
        out, total, total_sq, shift = torch.ops.fastnas.pointwise_conv_stats(x, weight)
        assert out.shape == (3, 2, 24, 5, 7) and out.dtype == torch.bfloat16
        assert per_edge_is_channels_last(out)
        assert total.shape == total_sq.shape == shift.shape == (3, 24)
        assert total.dtype == total_sq.dtype == shift.dtype == torch.float32
        gx, gw = torch.ops.fastnas.pointwise_conv_stats_backward(
            out, total, None, x, weight, out, shift, True, True
        )
        assert gx.shape == x.shape and gx.is_contiguous(memory_format=torch.channels_last)
        assert gw.shape == weight.shape and gw.dtype == torch.bfloat16
        x5 = torch.empty(3, 2, 16, 5, 7)
        out, total, _, shift = torch.ops.fastnas.pointwise_conv_stats(x5, weight.float())
        assert out.shape == (3, 2, 24, 5, 7) and out.is_contiguous()
        gx, gw = torch.ops.fastnas.pointwise_conv_stats_backward(
            None, total, None, x5, weight, out, shift, True, False
        )
        assert gx.shape == x5.shape and gw.numel() == 0


# --------------------------------------------------------------------------------------------------
# Kernel path against the reference
# --------------------------------------------------------------------------------------------------

CASES = [
    # e, c_in, c_out, h, w, shared, channels_last
    (3, 16, 24, 5, 7, True, False),
    (3, 24, 3, 3, 5, False, True),
    (1, 3, 16, 5, 5, True, True),
    (1, 24, 24, 7, 3, False, False),
    (3, 3, 3, 1, 5, True, False),  # H = 1
    (3, 16, 16, 9, 9, False, True),  # H*W = 81: a 128-pixel tile, 47 masked
]


def _check_against_reference(got, ref, x, dtype):
    (out, total, total_sq, shift), (gx, gw) = got
    (r_out, r_total, r_total_sq, r_shift), (r_gx, r_gw) = ref
    assert out.dtype == dtype and out.shape == r_out.shape and out.stride() == r_out.stride()
    assert total.dtype == total_sq.dtype == shift.dtype == torch.float32
    assert gx.dtype == dtype and gx.shape == x.shape and gx.stride() == r_gx.stride()
    assert gw.dtype == dtype and gw.shape == r_gw.shape
    # The statistics are those of the stored (rounded) out, shifted by the kernel's own shift: the conv at
    # sample 0's first pixel (fp32, before rounding), so within an ulp of the stored out there.
    t_total, t_total_sq = shifted_sums(out, shift)
    close(total, t_total, **STATS)
    close(total_sq, t_total_sq, **STATS)
    mean, var = moments(out, total, total_sq, shift)
    r_mean, r_var = moments(r_out, r_total, r_total_sq, r_shift)
    if dtype == torch.float32:
        close(out, r_out, **F32)
        close(shift, r_shift, **F32)
        close(mean, r_mean, **STATS)
        close(var, r_var, **STATS)
        close(gx, r_gx, **F32)
        close(gw, r_gw, **STATS)
    else:
        # bf16: both round fp32 accumulations of the same products once (the interpreter truncates), so out
        # differs by at most an ulp; the moments of 1-ulp differences by a fraction of the scale * 2^-7.
        close(out, r_out, **BF16)
        close(shift, out[:, 0, :, 0, 0], **BF16)
        scale = float(out.float().abs().max())
        close(mean, r_mean, rtol=0.0, atol=2**-7 * scale)
        close(var, r_var, rtol=2**-6, atol=2**-6 * scale * scale)
        close_scaled(gx, r_gx, 2e-2)
        close_scaled(gw, r_gw, 2e-2)


@needs_kernels
@pytest.mark.parametrize("e,c_in,c_out,h,w,shared,cl", CASES)
def test_kernel_matches_reference_fp32(e, c_in, c_out, h, w, shared, cl):
    x, weight, grads = make(e=e, c_in=c_in, c_out=c_out, h=h, w=w, shared=shared, cl=cl, seed=c_in + h)
    got = run(pointwise_conv_stats, x, weight, grads)
    ref = run(pointwise_conv_stats_reference, x, weight, grads)
    assert per_edge_is_channels_last(got[0][0]) == cl
    _check_against_reference(got, ref, x, torch.float32)
    close(got[0][0], truth(x, weight), **F32)  # and the float64 conv itself


@needs_kernels
@pytest.mark.parametrize("e,c_in,c_out,h,w,shared,cl", [CASES[0], CASES[1], CASES[2]])
def test_kernel_matches_reference_bf16(e, c_in, c_out, h, w, shared, cl):
    x, weight, grads = make(
        e=e, c_in=c_in, c_out=c_out, h=h, w=w, shared=shared, cl=cl, dtype=torch.bfloat16, seed=7
    )
    got = run(pointwise_conv_stats, x, weight, grads)
    ref = run(pointwise_conv_stats_reference, x, weight, grads)
    _check_against_reference(got, ref, x, torch.bfloat16)


@needs_kernels
@pytest.mark.parametrize("shared", [True, False])
def test_kernel_then_batch_norm_matches_batch_norm(shared):
    """Kernel conv -> batch_norm_from_stats equals F.batch_norm of the reference conv per edge, in value
    and in the gradients of x and weight (which flow back through total and total_sq)."""
    x, weight, (g, _, _) = make(c_in=24, c_out=16, shared=shared, cl=not shared, seed=11)
    check_bn_composition(pointwise_conv_stats, x, weight, g, tol=F32_SUMS)


@needs_kernels
def test_kernel_partial_output_gradients():
    """Only total_sq is used (grad_out and grad_total absent), x does not require grad."""
    x, weight, _ = make(c_in=3, c_out=16, seed=5)
    grads = []
    for fn in (pointwise_conv_stats, pointwise_conv_stats_reference):
        (wl,) = fresh_leaves(weight)
        fn(x, wl)[2].sum().backward()
        grads.append(wl.grad)
    close(grads[0], grads[1], **STATS)


def _far_from_centred():
    """Conv outputs with a large mean (~1000) and a small spread (std ~0.025) per channel: mean^2 / var
    ~ 1.6e9, beyond float32's 2^24."""
    gen = torch.Generator().manual_seed(31)
    x = 100.0 + 0.01 * torch.randn(2, 16, 5, 7, generator=gen)
    weight = 0.625 + 0.01 * torch.randn(3, 8, 16, generator=gen)
    return x.to(DEVICE), weight.to(DEVICE)


@pytest.mark.parametrize(
    "conv",
    [
        pytest.param(pointwise_conv_stats, marks=needs_kernels, id="kernel"),
        pytest.param(pointwise_conv_stats_reference, id="reference"),
    ],
)
def test_variance_of_outputs_far_from_centred(conv):
    """The shifted sums give the variance of the stored outputs to float32 precision where the one-pass
    ``E[z^2] - E[z]^2`` of the same outputs' float32 sums is off by more than the variance itself."""
    x, weight = _far_from_centred()
    out, total, total_sq, shift = conv(x, weight)
    od = out.double().cpu()
    t_mean, t_var = od.mean(dim=(1, 3, 4)), od.var(dim=(1, 3, 4), correction=0)
    assert float(t_mean.min()) > 900.0 and float(t_var.min()) > 1e-4 and float(t_var.max()) < 1e-2
    _, mean, var = batch_norm_from_stats(out, total, total_sq, shift)
    rel_var = ((var.double().cpu() - t_var).abs() / t_var).max()
    assert rel_var < 1e-3, f"variance off by {float(rel_var):.2e} relative"
    close(mean, t_mean, rtol=1e-6, atol=0.0)
    count = out.shape[1] * out.shape[3] * out.shape[4]
    of = out.float()
    one_pass = (of * of).sum(dim=(1, 3, 4)) / count - (of.sum(dim=(1, 3, 4)) / count) ** 2
    assert ((one_pass.double().cpu() - t_var).abs() / t_var).max() > 1.0  # the data defeats the old formula


poisoned = poisoned_fixture(pc)  # every buffer the launcher allocates with _empty starts as NaN


@needs_kernels
@pytest.mark.parametrize("shared,cl", [(True, False), (False, True)])
def test_kernel_poisoned_output_and_small_tiles(poisoned, monkeypatch, shared, cl):
    """16-wide tiles: C_out = 24 -> 2 channel blocks (second partial), C_in = 24 -> 2 dot steps (second
    masked), H*W = 35 -> 3 pixel blocks (last partial); many programs add into each channel's sums. The
    backward: grad x in 2 x 3 tiles per sample, each summing 2 C_out steps (of every edge for a shared x);
    grad weight in 2 x 2 tiles per edge, its N*P_BLKS = 6 (sample, pixel block) tiles split into 3 chunks
    of 2 (one across the sample boundary) whose fp32 partials the summing kernel adds."""
    monkeypatch.setattr(pc, "_MAX_BLOCK_CO", 16)
    monkeypatch.setattr(pc, "_MAX_BLOCK_P", 16)
    monkeypatch.setattr(pc, "_MAX_BLOCK_K", 16)
    monkeypatch.setattr(pc, "_MAX_BLOCK_GW", 16)
    monkeypatch.setattr(pc, "_MAX_BLOCK_R", 16)
    monkeypatch.setattr(pc, "_num_splits", lambda tiles, programs: 3)
    x, weight, grads = make(c_in=24, c_out=24, shared=shared, cl=cl, seed=13)
    got = run(pointwise_conv_stats, x, weight, grads)
    assert not got[0][0].isnan().any()
    ref = run(pointwise_conv_stats_reference, x, weight, grads)
    _check_against_reference(got, ref, x, torch.float32)


@needs_kernels
def test_kernel_strided_views(poisoned):
    """Inputs read in place through general strides: a sliced channels-last input (H stride != W * W
    stride, the non-flat pixel path, as FactorizedReduce's x[:, :, 1:, 1:]), sliced inside the function so
    the kernel sees the view, and a per-edge input that is an expanded (stride-0) view."""
    x, weight, grads = make(c_in=16, c_out=3, h=6, w=8, cl=True, seed=17)
    g = tuple(t[:, :, :, 1:, 1:] if t.dim() == 5 else t for t in grads)
    sliced = x[:, :, 1:, 1:]
    assert sliced.stride(-2) != sliced.shape[-1] * sliced.stride(-1)

    def view_of(fn):
        return lambda x, weight: fn(x[:, :, 1:, 1:], weight)

    got = run(view_of(pointwise_conv_stats), x, weight, g)
    ref = run(view_of(pointwise_conv_stats_reference), x, weight, g)
    _check_against_reference(got, ref, x, torch.float32)
    assert got[1][0][:, :, 0].abs().sum() == 0 and got[1][0][:, :, 1:, 1:].abs().min() > 0
    xe = x.expand(3, *x.shape)
    out, total, total_sq, shift = pointwise_conv_stats(xe, weight)
    r_out, r_total, r_total_sq, r_shift = pointwise_conv_stats_reference(xe, weight)
    close(out, r_out, **F32)
    close(shift, r_shift, **F32)
    close(total, r_total, **STATS)
    close(total_sq, r_total_sq, **STATS)


# Which outputs a loss uses: the backward gets None for the others (no materialised zeros), and the
# kernels leave their terms out (HAS_GRAD_OUT / HAS_TOTAL / HAS_TOTAL_SQ).
USED = [(0,), (0, 1), (0, 2), (1,), (2,), (1, 2)]


def _run_used(fn, x, weight, grads, used, sums):
    """Forward and backward of ``fn`` where the loss uses only the outputs ``used`` (indices into
    ``(out, total, total_sq)``): with the random ``grads`` of those, or (``sums``) as ``.sum()`` so that
    autograd passes expanded (all strides 0) gradients. Returns (grad x, grad weight)."""
    x, weight = fresh_leaves(x, weight)
    outs = fn(x, weight)
    if sums:
        loss = sum(outs[i].float().sum() for i in used)
    else:
        loss = sum((outs[i].float() * grads[i].float()).sum() for i in used)
    loss.backward()
    return x.grad, weight.grad


def _recorded_backward(monkeypatch):
    """Wrap the Triton backward launcher: the list of its calls' gradient arguments (None where absent)."""
    calls = []
    launch = pc._launch_backward

    def wrapper(*args):
        calls.append(args[:3])
        return launch(*args)

    monkeypatch.setattr(pc, "_launch_backward", wrapper)
    return calls


def _used_id(used):
    return "+".join(("out", "total", "total_sq")[i] for i in used)


@needs_kernels
@pytest.mark.parametrize(
    "used,shared,cl",
    [(u, i % 2 == 0, i % 4 in (1, 2)) for i, u in enumerate(USED)],  # each of the 4 layout cases
    ids=lambda v: _used_id(v) if isinstance(v, tuple) else str(v),
)
def test_kernel_backward_of_used_outputs(poisoned, monkeypatch, used, shared, cl):
    """The Triton backward against autograd through the reference for every subset of used outputs, fp32:
    the same products summed in another order (grad x over E*C_out terms, grad weight over N*H*W)."""
    calls = _recorded_backward(monkeypatch)
    x, weight, grads = make(
        e=2, c_in=16, c_out=24, h=3, w=5, shared=shared, cl=cl, seed=len(used) + 3 * used[0]
    )
    gx, gw = _run_used(pointwise_conv_stats, x, weight, grads, used, sums=False)
    r_gx, r_gw = _run_used(pointwise_conv_stats_reference, x, weight, grads, used, sums=False)
    assert [[g is not None for g in c] for c in calls] == [[i in used for i in range(3)]]
    assert gx.stride() == r_gx.stride() and gw.is_contiguous()
    close(gx, r_gx, **F32)
    close(gw, r_gw, **STATS)


@needs_kernels
@pytest.mark.parametrize("used", [(0,), (1, 2)], ids=["out", "total+total_sq"])
def test_kernel_backward_of_expanded_gradients(monkeypatch, used):
    """``.sum()`` losses: autograd passes grad_out / grad_total / grad_total_sq as expanded views (every
    stride 0), read in place."""
    calls = _recorded_backward(monkeypatch)
    x, weight, grads = make(e=2, c_in=16, c_out=16, h=3, w=5, shared=False, cl=True, seed=37)
    gx, gw = _run_used(pointwise_conv_stats, x, weight, grads, used, sums=True)
    r_gx, r_gw = _run_used(pointwise_conv_stats_reference, x, weight, grads, used, sums=True)
    assert all(set(g.stride()) == {0} for g in calls[0] if g is not None)
    close(gx, r_gx, **F32)
    close(gw, r_gw, **STATS)


@needs_kernels
@pytest.mark.parametrize("used", [(0,), (1, 2)], ids=["out", "total+total_sq"])
def test_kernel_backward_of_used_outputs_bf16(used):
    """bf16 tolerance: both sides multiply the same bf16 x / weight with fp32 accumulation and round the
    result to bf16 once (an ulp, 2^-8 relative). They differ in g: the reference rounds the gradient of
    its bf16 ``out`` (grad_out plus the statistics' term) to bf16, the kernel keeps g in fp32 (under the
    interpreter; on a GPU it rounds it to bf16 for the tensor cores, once); each rounding moves a product
    by at most 2^-8 of itself, so the sums by at most 2^-8 of the sum of |products|, here a few times
    the largest entry. 2e-2 of the largest entry (about 5 ulp at that scale) covers both with margin;
    it is relative to the scale because entries near 0 would fail a purely relative check."""
    x, weight, grads = make(
        e=2, c_in=16, c_out=24, h=3, w=5, shared=True, cl=True, dtype=torch.bfloat16, seed=41
    )
    gx, gw = _run_used(pointwise_conv_stats, x, weight, grads, used, sums=False)
    r_gx, r_gw = _run_used(pointwise_conv_stats_reference, x, weight, grads, used, sums=False)
    assert gx.dtype == gw.dtype == torch.bfloat16
    close_scaled(gx, r_gx, 2e-2)
    close_scaled(gw, r_gw, 2e-2)


@pytest.mark.parametrize("used", USED, ids=_used_id)
def test_operator_torch_math_of_used_outputs_float64(used):
    """The operator's PyTorch math (float64) with None for the unused outputs' gradients equals autograd
    through the reference."""
    x, weight, grads = make(e=2, c_in=3, c_out=4, h=2, w=3, dtype=torch.float64, device="cpu")
    grads = tuple(g.double() for g in grads)
    got = _run_used(torch.ops.fastnas.pointwise_conv_stats, x, weight, grads, used, sums=False)
    want = _run_used(pointwise_conv_stats_reference, x, weight, grads, used, sums=False)
    close_all(got, want, ("grad x", "grad weight"), exact=True, **F64)


def test_backward_without_gradients_is_none():
    """Autograd no longer materialises zeros for unused outputs; with none of them given the backward
    returns no gradient (it is not called for a loss that uses only ``shift``, which is not
    differentiable)."""

    class Ctx:
        needs_input_grad = (True, True)
        saved_tensors = (None, None, None, None)
        nodes = (None, None)

    assert pc._backward(Ctx(), None, None, None, None) == (None, None)


def test_backward_operator_sums_over_edges_of_a_shared_input():
    """The backward operator returns grad x in x's shape for a shared x (not E per-edge gradients left for
    autograd to sum) and in x's layout."""
    x, weight, (g, gt, gts) = make(c_in=3, c_out=16, cl=True, device="cpu")
    out, _, _, shift = pointwise_conv_stats_reference(x, weight)
    gx, gw = torch.ops.fastnas.pointwise_conv_stats_backward(g, gt, gts, x, weight, out, shift, True, True)
    assert gx.shape == x.shape and gx.is_contiguous(memory_format=torch.channels_last)
    assert gw.shape == weight.shape and gw.is_contiguous()
    xs = torch.stack([x] * 3).requires_grad_(True)
    ws = weight.detach().clone().requires_grad_(True)
    torch.autograd.backward(pointwise_conv_stats_reference(xs, ws)[:3], [g, gt, gts])
    close(gx, xs.grad.sum(0), **F32)
    close(gw, ws.grad, **STATS)


# --------------------------------------------------------------------------------------------------
# Dispatch, reference switch, torch.compile, opcheck
# --------------------------------------------------------------------------------------------------


@needs_kernels
def test_reference_switch_skips_the_kernel(monkeypatch):
    x, weight, grads = make(c_in=3, c_out=16, seed=19)
    forced, fused = check_reference_switch(
        monkeypatch, pc, lambda: run(pointwise_conv_stats, x, weight, grads), "forward"
    )
    _check_against_reference(fused, forced, x, torch.float32)


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op(monkeypatch):
    calls = count_launches(monkeypatch, pc, "forward")
    x, weight, grads = make(c_in=16, c_out=3, cl=True, seed=23)

    def step(x, weight):
        zhat, _, _ = batch_norm_from_stats(*pointwise_conv_stats(x.relu(), weight))
        return zhat * 2.0

    g = grads[0]
    _, got, ref = compile_and_reference(step, lambda fn: run(lambda *a: (fn(*a),), x, weight, (g,)), calls)
    close(got[0][0], ref[0][0], **F32_SUMS)
    close_all(got[1], ref[1], ("grad x", "grad weight"), **F32_SUMS)


@needs_kernels
@pytest.mark.parametrize("shared,cl", [(True, True), (False, False)])
def test_opcheck(shared, cl):
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the operator
    on the kernel path (tiny shapes)."""
    x, weight, _ = make(e=2, n=2, c_in=3, c_out=3, h=3, w=3, shared=shared, cl=cl, seed=29)
    torch.library.opcheck(
        torch.ops.fastnas.pointwise_conv_stats.default, (x.requires_grad_(), weight.requires_grad_())
    )


@needs_kernels
def test_backward_skips_the_gradients_a_pass_does_not_ask_for(monkeypatch):
    """``backward(inputs=[x])`` (DARTS' architecture step wants the alphas, not the weights) launches the
    input-gradient kernel only; asking for the weight only launches the weight kernel only; the gradient
    asked for equals the full backward's."""
    x, weight, (g, g_total, g_sq) = make(e=2, c_in=16, c_out=16, h=3, w=4, seed=5)
    launched = record_kernel_launches(monkeypatch, pc, "_grad_x_kernel", "_grad_weight_kernel")

    def loss(x_leaf, w_leaf):
        # both reach the op through another op, as the fast executor's states and packed weights do
        out, total, total_sq, _ = pointwise_conv_stats(x_leaf * 1.0, w_leaf * 1.0)
        return (out * g).sum() + (total * g_total).sum() + (total_sq * g_sq).sum()

    full = (x.clone().requires_grad_(True), weight.clone().requires_grad_(True))
    loss(*full).backward()
    assert sorted(launched) == ["_grad_weight_kernel", "_grad_x_kernel"]
    for wanted, kernel in ((0, "_grad_x_kernel"), (1, "_grad_weight_kernel")):
        launched.clear()
        leaves = (x.clone().requires_grad_(True), weight.clone().requires_grad_(True))
        loss(*leaves).backward(inputs=[leaves[wanted]])
        assert launched == [kernel]
        assert leaves[1 - wanted].grad is None
        torch.testing.assert_close(leaves[wanted].grad, full[wanted].grad, rtol=0, atol=0)
