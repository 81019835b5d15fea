"""fastnas.kernels.bn_from_stats: BN(affine=False, training) from shifted per-channel sums, the Triton
operator against its reference (:func:`fastnas.kernels.pointwise_conv.batch_norm_from_stats`).

The operator's PyTorch math (float64) is checked against autograd through the reference and by gradcheck;
the kernel path (Triton; on a CPU-only machine in the interpreter, TRITON_INTERPRET=1 set by conftest.py)
against the reference for zhat, mean, var and the gradients of z, total and total_sq, in fp32 and bf16,
NCHW, channels-last and strided z and gradients, a channel whose mean is far larger than its spread,
channels where the variance clamp is active, gradients w.r.t. some inputs only, split reductions with
NaN-poisoned buffers; plus launch counts, argument errors, fake shapes, opcheck and torch.compile.
Shapes are tiny: every interpreted launch costs milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from kernel_testing import (
    BF16,
    DEVICE,
    F32,
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
)

from fastnas.kernels import bn_from_stats as bfs
from fastnas.kernels.bn_from_stats import batch_norm_from_stats, batch_norm_from_stats_reference

EPS = 1e-5
NAMES = ("zhat", "mean", "var")
GRAD_NAMES = ("grad z", "grad total", "grad total_sq")
# fp32 gradients of total/total_sq: sums over N*H*W of g and g * (z - mean) in another order (and split into
# partials), then a difference of two such terms; compared relative to the largest gradient of the tensor.
SUMS_REL = 1e-5


def make(shape=(2, 2, 3, 4, 5), dtype=torch.float32, cl=False, seed=0, device=DEVICE, far=False):
    """Random non-zero ``z`` (per-channel scales and offsets), its shifted sums as pointwise_conv_stats
    gives them (shift = the value at sample 0's first pixel), and a random grad of zhat. ``far``: channel 0
    of every edge gets mean 1000 and std 0.01 (mean^2 / var = 1e10, beyond float32's 2^24)."""
    gen = torch.Generator().manual_seed(seed)
    e, n, c, h, w = shape
    z = torch.randn(shape, generator=gen) * (0.5 + torch.rand(e, 1, c, 1, 1, generator=gen))
    z = z + 2.0 * torch.randn(e, 1, c, 1, 1, generator=gen)
    if far:
        z[:, :, 0] = 1000.0 + 0.01 * torch.randn(e, n, h, w, generator=gen)
    g = torch.randn(shape, generator=gen)
    z = z.to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # the sums' dtype
    shift = z[:, 0, :, 0, 0].to(acc).clone()  # not a view of z (gradcheck perturbs z in place)
    d = z.double() - shift.double()[:, None, :, None, None]  # summed in float64, rounded once
    total, total_sq = d.sum(dim=(1, 3, 4)).to(acc), (d * d).sum(dim=(1, 3, 4)).to(acc)
    z, g = z.to(device), g.to(device=device, dtype=dtype)
    if cl:
        z, g = channels_last(z), channels_last(g)
    return z, total.to(device), total_sq.to(device), shift.to(device), g


def run(fn, z, total, total_sq, shift, g, wrt=(True, True, True)):
    """Forward and backward of ``fn``; returns (zhat, mean, var) and the gradients of z, total, total_sq
    (None for those not in ``wrt``)."""
    z, total, total_sq = (t.detach().clone().requires_grad_(w) for t, w in zip((z, total, total_sq), wrt))
    zhat, mean, var = fn(z, total, total_sq, shift)
    assert not mean.requires_grad and not var.requires_grad
    zhat.backward(g)
    return (zhat.detach(), mean, var), (z.grad, total.grad, total_sq.grad)


def op(z, total, total_sq, shift):
    return torch.ops.fastnas.batch_norm_from_stats(z, total, total_sq, shift, EPS)


def truth(z, eps=EPS):
    """Independent float64 formula: BN of each edge's z over (N, H, W), biased variance."""
    zd = z.detach().double().cpu()
    mean, var = zd.mean(dim=(1, 3, 4)), zd.var(dim=(1, 3, 4), correction=0)
    zhat = (zd - mean[:, None, :, None, None]) / (var[:, None, :, None, None] + eps).sqrt()
    return zhat, mean, var


def check_grads(got, want, dtype):
    """grad z: one product g * rstd per element, rounded once to z's dtype (F32; BF16: an ulp of bf16 and
    the interpreter's truncating cast). grad total / total_sq are float32 in both dtypes (the sums'
    dtype), computed from the same fp32 values of g and z: they differ only by the summation order, so
    ``SUMS_REL`` of their scale."""
    gz, gt, gq = got
    r_gz, r_gt, r_gq = want
    for a, b in ((gz, r_gz), (gt, r_gt), (gq, r_gq)):
        assert (a is None) == (b is None)
    if gz is not None:
        assert gz.dtype == r_gz.dtype and gz.stride() == r_gz.stride()
        close(gz, r_gz, **(F32 if dtype == torch.float32 else BF16))
    for a, b in ((gt, r_gt), (gq, r_gq)):
        if b is not None:
            assert a.dtype == b.dtype == torch.float32
            close_scaled(a, b, SUMS_REL)


def check_outputs(got, want, dtype):
    """zhat: the same fp32 formula on the same inputs, one rounding (F32 / BF16). mean and var: the same
    float32 operations on the same [E, C] sums (IEEE divisions in both): F32."""
    zhat, mean, var = got
    r_zhat, r_mean, r_var = want
    assert zhat.dtype == dtype and zhat.shape == r_zhat.shape and zhat.stride() == r_zhat.stride()
    assert mean.dtype == var.dtype == r_mean.dtype == torch.float32
    close(zhat, r_zhat, **(F32 if dtype == torch.float32 else BF16))
    close_all((mean, var), (r_mean, r_var), ("mean", "var"), **F32)


# --------------------------------------------------------------------------------------------------
# The operator's PyTorch math (float64)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cl", [False, True])
def test_torch_math_of_the_operator_float64(cl):
    """float64 is not a kernel dtype: the operator runs its PyTorch math, through its own backward
    operator; it agrees with autograd through the reference (and the reference with the float64 BN)."""
    z, total, total_sq, shift, g = make(dtype=torch.float64, cl=cl, device="cpu")
    got = run(op, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    assert got[0][0].stride() == ref[0][0].stride() == z.stride()
    close_all(got[0], ref[0], NAMES, exact=True, **F64)
    close_all(got[1], ref[1], GRAD_NAMES, exact=True, rtol=1e-10, atol=1e-12)
    close_all(ref[0], truth(z), NAMES, exact=True, rtol=1e-10, atol=1e-10)


def test_operator_gradcheck_float64():
    """gradcheck of the operator's backward formulas (PyTorch math) w.r.t. z, total and total_sq; the
    sums are perturbed away from z's own (the formulas hold for any sums with a positive variance)."""
    z, total, total_sq, shift, _ = make(shape=(2, 2, 3, 2, 3), dtype=torch.float64, device="cpu")
    gen = torch.Generator().manual_seed(3)
    total = total + 0.1 * torch.randn(2, 3, dtype=torch.float64, generator=gen)
    total_sq = total_sq + 0.1 * torch.rand(2, 3, dtype=torch.float64, generator=gen)
    leaves = tuple(t.detach().requires_grad_(True) for t in (z, total, total_sq))
    assert torch.autograd.gradcheck(lambda *a: op(*a, shift)[0], leaves)
    # and the reference, which the kernels are compared with
    assert torch.autograd.gradcheck(lambda *a: batch_norm_from_stats_reference(*a, shift)[0], leaves)


def _clamped(z, total, total_sq):
    """Sums whose variance is negative (clamped to 0) in channel 1 of every edge and exactly 0 in channel
    2: the clamp passes no gradient there (clamp_min's gradient is 0 where v <= 0)."""
    count = z.shape[1] * z.shape[3] * z.shape[4]
    total_sq = total_sq.clone()
    total_sq[:, 1] = 0.0
    total_sq[:, 2] = total[:, 2] * total[:, 2] / count  # v = q/count - d^2 = 0 (exactly: d^2 * count / count)
    return total_sq


def test_clamped_variance_float64():
    z, total, total_sq, shift, g = make(dtype=torch.float64, device="cpu")
    total = total.clone()
    total[:, 2] = 4.0 * z.shape[1] * z.shape[3] * z.shape[4]  # d = 4: v = 0 exactly below
    total_sq = _clamped(z, total, total_sq)
    got = run(op, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    assert float(ref[0][2][:, 1:].abs().max()) == 0.0  # var clamped / exactly 0
    assert float(ref[1][2][:, 1:].abs().max()) == 0.0  # no gradient into total_sq there
    close_all(got[0], ref[0], NAMES, exact=True, **F64)
    close_all(got[1], ref[1], GRAD_NAMES, exact=True, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Kernel path against the reference
# --------------------------------------------------------------------------------------------------

CASES = [
    # shape (E, N, C, H, W), channels_last
    ((2, 2, 3, 4, 5), False),
    ((2, 2, 3, 4, 5), True),
    ((1, 3, 5, 3, 3), True),  # C not a power of two, odd spatial size
    ((3, 1, 2, 1, 7), False),  # N = 1, H = 1
    ((1, 2, 1, 5, 1), False),  # C = 1, W = 1
]


@needs_kernels
@pytest.mark.parametrize("shape,cl", CASES)
def test_kernel_matches_reference_fp32(shape, cl):
    z, total, total_sq, shift, g = make(shape=shape, cl=cl, seed=sum(shape))
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    if shape[2] > 1 and shape[3] * shape[4] > 1:  # else both layouts are the same
        assert per_edge_is_channels_last(got[0][0]) == cl and got[0][0].is_contiguous() == (not cl)
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)
    zhat, mean, var = truth(z)
    close_all(got[0], (zhat, mean, var), NAMES, rtol=1e-5, atol=1e-5)  # and the float64 BN itself


@needs_kernels
@pytest.mark.parametrize("shape,cl", CASES[:3])
def test_kernel_matches_reference_bf16(shape, cl):
    z, total, total_sq, shift, g = make(shape=shape, cl=cl, dtype=torch.bfloat16, seed=7)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    assert got[1][0].dtype == torch.bfloat16
    check_outputs(got[0], ref[0], torch.bfloat16)
    check_grads(got[1], ref[1], torch.bfloat16)


@needs_kernels
@pytest.mark.parametrize("cl", [False, True])
def test_kernel_channel_far_from_centred(cl):
    """Channel 0 has mean 1000 and std 0.01: with the shifted sums the kernel gives its variance and zhat
    to float32 precision, as the reference (the one-pass E[z^2] - E[z]^2 would lose all of it)."""
    z, total, total_sq, shift, g = make(cl=cl, far=True, seed=5)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)
    t_zhat, t_mean, t_var = truth(z)
    var = got[0][2].double()
    assert float(t_mean[:, 0].min()) > 999.0 and float(t_var[:, 0].max()) < 1e-3
    assert float(((var - t_var) / t_var).abs().max()) < 1e-3
    # z - mean has the absolute error of z (ulp(1000) ~ 6e-5), i.e. ~6e-3 in units of std
    close(got[0][0], t_zhat, rtol=0.0, atol=2e-2)


@needs_kernels
def test_kernel_clamped_variance():
    z, total, total_sq, shift, g = make(seed=9)
    total = total.clone()
    total[:, 2] = 4.0 * z.shape[1] * z.shape[3] * z.shape[4]  # d = 4 (a power of two): v = 0 exactly
    total_sq = _clamped(z, total, total_sq)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    assert float(got[0][2][:, 1:].abs().max()) == 0.0
    assert float(got[1][2][:, 1:].abs().max()) == 0.0
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)


class _CountedKernel:
    """Stands in for a Triton kernel: counts ``kernel[grid](...)`` launches and runs the real one."""

    def __init__(self, kernel: Any) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid: Any) -> Any:
        self.launches += 1
        return self.kernel[grid]


def _count_kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, _CountedKernel]:
    names = ("_forward_kernel", "_backward_reduce_kernel", "_backward_kernel")
    counted = {name: _CountedKernel(getattr(bfs, name)) for name in names}
    for name, kernel in counted.items():
        monkeypatch.setattr(bfs, name, kernel)
    return counted


@needs_kernels
@pytest.mark.parametrize(
    "wrt,backward_launches",
    [
        ((True, True, True), 2),
        ((True, False, False), 1),  # grad z = g * rstd needs no sums: no reduction
        ((False, False, True), 2),
        ((True, True, False), 2),
        ((False, True, False), 2),
    ],
)
def test_kernel_gradients_of_some_inputs_and_launch_counts(monkeypatch, wrt, backward_launches):
    """One launch forward; backward two (reduction + finalising/elementwise kernel), one when only grad z
    is needed; the gradients of the inputs that do not require grad stay None."""
    z, total, total_sq, shift, g = make(cl=True, seed=11)
    counted = _count_kernels(monkeypatch)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g, wrt=wrt)
    launches = {name: k.launches for name, k in counted.items()}
    assert launches["_forward_kernel"] == 1
    assert launches["_backward_reduce_kernel"] + launches["_backward_kernel"] == backward_launches
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g, wrt=wrt)
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)


poisoned = poisoned_fixture(bfs)  # every buffer the launchers allocate with _empty starts as NaN


@needs_kernels
@pytest.mark.parametrize("cl", [False, True])
def test_kernel_poisoned_buffers_small_tiles_and_split_reduction(poisoned, monkeypatch, cl):
    """2-channel tiles (C = 5: 3 channel blocks, the last partial), 4-pixel tiles (H*W = 12: 3 pixel
    blocks), an 8-value reduction step over N*H*W = 24 in 3 chunks, and 2 partials per step of the
    finalising programs (3 partials: 2 steps, the second masked); every buffer written in full."""
    monkeypatch.setattr(bfs, "_MAX_BLOCK_C", 2)
    monkeypatch.setattr(bfs, "_TILE", 8)
    monkeypatch.setattr(bfs, "_REDUCE_TILE", 16)
    monkeypatch.setattr(bfs, "_PARTIAL_TILE", 4)
    monkeypatch.setattr(bfs, "_num_splits", lambda m, programs, block: 3)
    z, total, total_sq, shift, g = make(shape=(2, 2, 5, 3, 4), cl=cl, seed=13)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, g)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, g)
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)


@needs_kernels
def test_kernel_strided_views(poisoned):
    """z read in place through general strides (a slice of a channels-last tensor: H stride != W * W
    stride, the non-flat pixel path), zhat and grad z in the layout the reference gives it; grad zhat as
    an expanded scalar (all strides 0) and as a transposed view."""
    z, total, total_sq, shift, g = make(shape=(2, 2, 3, 4, 5), cl=True, seed=17)
    zs = z[:, :, :, 1:, 1:]
    assert zs.stride(3) != zs.shape[4] * zs.stride(4)
    d = zs.double() - shift.double()[:, None, :, None, None]
    total, total_sq = d.sum(dim=(1, 3, 4)).float(), (d * d).sum(dim=(1, 3, 4)).float()
    gs = g[:, :, :, 1:, 1:]
    got = run(batch_norm_from_stats, zs, total, total_sq, shift, gs)
    ref = run(batch_norm_from_stats_reference, zs, total, total_sq, shift, gs)
    assert per_edge_is_channels_last(got[0][0])
    check_outputs(got[0], ref[0], torch.float32)
    check_grads(got[1], ref[1], torch.float32)
    # grad zhat = 1 everywhere, expanded from a scalar
    results = []
    for fn in (batch_norm_from_stats, batch_norm_from_stats_reference):
        zl, tl_, ql = fresh_leaves(z, total, total_sq)
        fn(zl, tl_, ql, shift)[0].sum().backward()
        results.append((zl.grad, None, None))
    check_grads(results[0], results[1], torch.float32)
    # a transposed (N <-> E) grad zhat
    gt = g.transpose(0, 1).contiguous().transpose(0, 1)
    got = run(batch_norm_from_stats, z, total, total_sq, shift, gt)
    ref = run(batch_norm_from_stats_reference, z, total, total_sq, shift, gt)
    check_grads(got[1], ref[1], torch.float32)


# --------------------------------------------------------------------------------------------------
# Errors, dispatch, fake tensors, opcheck, torch.compile
# --------------------------------------------------------------------------------------------------


def test_argument_errors():
    z = torch.zeros(3, 2, 4, 5, 5)
    s = torch.zeros(3, 4)
    for fn in (batch_norm_from_stats, batch_norm_from_stats_reference):
        with pytest.raises(ValueError, match=r"`total` must be \[E, C\]"):
            fn(z, torch.zeros(3, 5), s, s)
        with pytest.raises(ValueError, match=r"`total_sq` must be \[E, C\] = \(3, 4\)"):
            fn(z, s, s[0], s)
        with pytest.raises(ValueError, match=r"`shift` must be \[E, C\]"):
            fn(z, s, s, torch.zeros(4))
        with pytest.raises(ValueError, match=r"`z` must be \[E, N, C, H, W\]"):
            fn(z[0], s, s, s)
        with pytest.raises(ValueError, match=r"N\*H\*W = 0"):
            fn(z[:, :0], s, s, s)
    with pytest.raises(TypeError, match="`z` must be float32, float64, bfloat16 or float16"):
        batch_norm_from_stats(z.int(), s, s, s)
    with pytest.raises(TypeError, match="`total` must be float32, float64, bfloat16 or float16"):
        batch_norm_from_stats(z, s.long(), s, s)
    with pytest.raises(ValueError, match="`shift` is on meta but `z` is on cpu"):
        batch_norm_from_stats(z, s, s, s.to("meta"))


@needs_kernels
def test_reference_switch_skips_the_kernels(monkeypatch):
    z, total, total_sq, shift, g = make(seed=19)
    forced, fused = check_reference_switch(
        monkeypatch, bfs, lambda: run(batch_norm_from_stats, z, total, total_sq, shift, g)
    )
    check_outputs(fused[0], forced[0], torch.float32)
    check_grads(fused[1], forced[1], torch.float32)


def test_fake_shapes_dtypes_and_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = channels_last(torch.empty(3, 2, 4, 5, 6, dtype=torch.bfloat16))
        s = torch.empty(3, 4)
        zhat, mean, var = torch.ops.fastnas.batch_norm_from_stats(z, s, s, s, EPS)
        assert zhat.shape == z.shape and zhat.dtype == torch.bfloat16 and zhat.stride() == z.stride()
        assert mean.shape == var.shape == (3, 4) and mean.dtype == var.dtype == torch.float32
        gz, gt, gq = torch.ops.fastnas.batch_norm_from_stats_backward(zhat, z, s, s, s, EPS, True, True)
        assert gz.shape == z.shape and gz.dtype == torch.bfloat16 and gz.stride() == z.stride()
        assert gt.shape == gq.shape == (3, 4) and gt.dtype == gq.dtype == torch.float32
        gz, gt, gq = torch.ops.fastnas.batch_norm_from_stats_backward(
            zhat, z, s.double(), s, s, EPS, False, True
        )
        assert gz.numel() == 0 and gt.dtype == torch.float64 and gq.dtype == torch.float32
        gz, gt, gq = torch.ops.fastnas.batch_norm_from_stats_backward(zhat, z, s, s, s, EPS, True, False)
        assert gz.shape == z.shape and gt.numel() == gq.numel() == 0
        zs = z[:, :, :, 1:, 1:]  # not dense: zhat dense in z's dimension order (channels-last per edge)
        zhat, _, _ = torch.ops.fastnas.batch_norm_from_stats(zs, s, s, s, EPS)
        assert zhat.shape == zs.shape and per_edge_is_channels_last(zhat)
        zd = torch.empty(3, 2, 4, 5, 6, dtype=torch.float64)
        zhat, mean, _ = torch.ops.fastnas.batch_norm_from_stats(zd, s, s, s, EPS)
        assert zhat.is_contiguous() and mean.dtype == torch.float64


@needs_kernels
@pytest.mark.parametrize("cl", [False, True])
def test_opcheck(cl):
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the operator
    on the kernel path (tiny shapes; each check runs the interpreted kernels a few times)."""
    z, total, total_sq, shift, _ = make(shape=(2, 2, 3, 2, 3), cl=cl, seed=29)
    args = (z.requires_grad_(), total.requires_grad_(), total_sq.requires_grad_(), shift, EPS)
    torch.library.opcheck(torch.ops.fastnas.batch_norm_from_stats.default, args)


def test_opcheck_float64_torch_math():
    z, total, total_sq, shift, _ = make(shape=(2, 2, 3, 2, 3), dtype=torch.float64, device="cpu")
    args = (z.requires_grad_(), total.requires_grad_(), total_sq.requires_grad_(), shift, EPS)
    torch.library.opcheck(torch.ops.fastnas.batch_norm_from_stats.default, args)


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op(monkeypatch):
    calls = count_launches(monkeypatch, bfs)
    z, total, total_sq, shift, g = make(cl=True, seed=23)

    def step(z, total, total_sq, shift):
        zhat, mean, var = batch_norm_from_stats(z.relu(), total, total_sq, shift)
        return zhat * 2.0, mean, var

    _, got, ref = compile_and_reference(step, lambda fn: run(fn, z, total, total_sq, shift, 2.0 * g), calls)
    close_all(got[0], ref[0], NAMES, **F32)
    check_grads(got[1], ref[1], torch.float32)
