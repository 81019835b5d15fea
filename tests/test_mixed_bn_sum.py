"""fastnas.kernels.mixed_bn_sum: the Triton mixed-op weighted sum with folded BN against its reference.

The reference (``F.batch_norm`` + weighted sum) is checked against an independent float64 formula and by
gradcheck; the kernel path (Triton; on a CPU-only machine in the interpreter, TRITON_INTERPRET=1 set by
conftest.py) is checked against the reference for outputs, statistics and the gradients of z, x, w and
w_skip. Shapes are tiny: every interpreted launch costs milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import (
    BF16,
    BF16_VS_FLOAT64,
    DEVICE,
    F32,
    F32_SUMS,
    F64,
    channels_last,
    check_reference_switch,
    close,
    close_all,
    compile_and_reference,
    count_launches,
    fresh_leaves,
    needs_kernels,
    poisoned_fixture,
)

from fastnas.kernels import mixed_bn_sum as mbs
from fastnas.kernels.mixed_bn_sum import mixed_bn_sum, mixed_bn_sum_reference, update_running_stats

SHAPE = (3, 2, 3, 5, 5)  # K, N, C, H, W
EPS = 1e-5
GRAD = {"rtol": 2e-5, "atol": 2e-5}  # fp32 gradients: two passes of sums in another order
GRAD_NAMES = ("grad z", "grad w", "grad x", "grad w_skip")


def make(
    shape=SHAPE,
    dtype=torch.float32,
    wdtype=None,
    skip=True,
    seed=0,
    offset=0.5,
    device=DEVICE,
):
    """Random non-zero inputs: z with per-op scale and offset, weights like a softmax, x, w_skip, grad."""
    gen = torch.Generator().manual_seed(seed)
    k, n, c, h, w_ = shape
    z = torch.randn(shape, generator=gen) * (1.0 + torch.rand(k, 1, c, 1, 1, generator=gen))
    z = z + offset * torch.randn(k, 1, c, 1, 1, generator=gen)
    w = torch.softmax(torch.randn(k, generator=gen), 0)
    x = torch.randn(n, c, h, w_, generator=gen) if skip else None
    ws = torch.rand((), generator=gen) + 0.1 if skip else None
    g = torch.randn(n, c, h, w_, generator=gen)

    def cast(t, dt):
        return None if t is None else t.to(device=device, dtype=dt)

    wd = wdtype or dtype
    return cast(z, dtype), cast(w, wd), cast(x, dtype), cast(ws, wd), cast(g, dtype)


def truth(z, w, x, ws, eps=EPS):
    """Independent float64 formula on the CPU."""
    z = z.detach().double().cpu()
    mean = z.mean(dim=(1, 3, 4))
    var = ((z - mean[:, None, :, None, None]) ** 2).mean(dim=(1, 3, 4))
    zhat = (z - mean[:, None, :, None, None]) / torch.sqrt(var[:, None, :, None, None] + eps)
    out = (w.detach().double().cpu()[:, None, None, None, None] * zhat).sum(0)
    if x is not None:
        out = out + float(ws) * x.detach().double().cpu()
    return out, mean, var


def run(fn, z, w, x, ws, g):
    """Forward and backward of ``fn``; returns outputs, stats and the gradients of (z, w, x, w_skip)."""
    leaves = fresh_leaves(z, w, x, ws)
    out, mean, var = fn(*leaves)
    out.backward(g)
    grads = [None if t is None else t.grad for t in leaves]
    return out.detach(), mean, var, grads


# --------------------------------------------------------------------------------------------------
# Reference path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [True, False])
def test_reference_matches_float64_formula(skip):
    z, w, x, ws, _ = make(skip=skip, device="cpu")
    out, mean, var = mixed_bn_sum_reference(z, w, x, ws)
    t_out, t_mean, t_var = truth(z, w, x, ws)
    assert out.dtype == torch.float32 and mean.dtype == torch.float32 and mean.shape == (3, 3)
    close_all((out, mean, var), (t_out, t_mean, t_var), **F32)
    assert not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize("skip", [True, False])
def test_reference_gradcheck_float64(skip):
    z, w, x, ws, _ = make(shape=(2, 2, 2, 3, 2), dtype=torch.float64, skip=skip, device="cpu")
    leaves = [t.requires_grad_(True) for t in (z, w, x, ws) if t is not None]

    def fn(*args):
        return mixed_bn_sum_reference(*args)[0] if skip else mixed_bn_sum_reference(args[0], args[1])[0]

    assert torch.autograd.gradcheck(fn, leaves)


def test_update_running_stats_matches_batchnorm():
    z, _, _, _, _ = make(device="cpu")
    k, n, c, h, wd = z.shape
    bns = [torch.nn.BatchNorm2d(c, affine=False, momentum=0.1) for _ in range(k)]
    for bn in bns:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    rm = torch.stack([bn.running_mean.clone() for bn in bns])
    rv = torch.stack([bn.running_var.clone() for bn in bns])
    for i, bn in enumerate(bns):
        bn.train()(z[i])
    _, mean, var = mixed_bn_sum_reference(z, torch.ones(k))
    update_running_stats(rm, rv, mean, var, n * h * wd, momentum=0.1)
    close(rm, torch.stack([bn.running_mean for bn in bns]), rtol=1e-6, atol=1e-6)
    close(rv, torch.stack([bn.running_var for bn in bns]), rtol=1e-6, atol=1e-6)


def test_argument_errors():
    z, w, x, ws, _ = make(device="cpu")
    with pytest.raises(ValueError, match="K, N, C, H, W"):
        mixed_bn_sum(z[0], w)
    with pytest.raises(ValueError, match="K = 3"):
        mixed_bn_sum(z, w[:2])
    with pytest.raises(ValueError, match="both"):
        mixed_bn_sum(z, w, x, None)
    with pytest.raises(ValueError, match="shape of one op output"):
        mixed_bn_sum(z, w, x[:, :2], ws)
    with pytest.raises(TypeError, match="dtype"):
        mixed_bn_sum(z, w, x.double(), ws)
    with pytest.raises(ValueError, match="more than 1 value"):
        mixed_bn_sum(z[:, :1, :, :1, :1], w)


def test_torch_math_of_the_operator_float64():
    """float64 is not a kernel dtype: the operator computes with PyTorch ops (its fallback), through its
    own backward operator; it must agree with autograd through the reference."""
    z, w, x, ws, g = make(dtype=torch.float64, device="cpu")
    got = run(lambda z, *a: torch.ops.fastnas.mixed_bn_sum([z], *a, EPS), z, w, x, ws, g)
    ref = run(mixed_bn_sum_reference, z, w, x, ws, g)
    close_all(got[:3], ref[:3], exact=True, **F64)
    close_all(got[3], ref[3], GRAD_NAMES, exact=True, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Kernel path against the reference
# --------------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize(
    "shape,skip",
    [
        (SHAPE, True),
        (SHAPE, False),
        ((2, 3, 5, 7, 3), True),  # odd sizes, H != W
        ((1, 2, 1, 1, 3), True),  # K = 1, C = 1, H = 1
        ((5, 1, 2, 3, 3), False),  # N = 1, K not a power of two
    ],
)
def test_kernel_matches_reference_fp32(shape, skip):
    z, w, x, ws, g = make(shape=shape, skip=skip, seed=sum(shape))
    out, mean, var, grads = run(mixed_bn_sum, z, w, x, ws, g)
    r_out, r_mean, r_var, r_grads = run(mixed_bn_sum_reference, z, w, x, ws, g)
    assert out.dtype == z.dtype and out.shape == shape[1:] and mean.shape == var.shape == (shape[0], shape[2])
    assert mean.dtype == var.dtype == torch.float32
    assert not mean.requires_grad and not var.requires_grad
    close_all((out, mean, var), (r_out, r_mean, r_var), ("out", "mean", "var"), **F32)
    for name, a, b in zip(GRAD_NAMES, grads, r_grads):
        assert (a is None) == (b is None), name
        assert b is None or (a.dtype == b.dtype and a.shape == b.shape), name
    close_all(grads, r_grads, GRAD_NAMES, **GRAD)


@needs_kernels
@pytest.mark.parametrize("skip", [True, False])
def test_kernel_matches_reference_bf16(skip):
    """bf16 activations, fp32 architecture weights (as under autocast)."""
    z, w, x, ws, g = make(shape=(3, 2, 3, 5, 3), dtype=torch.bfloat16, wdtype=torch.float32, skip=skip)
    out, mean, var, grads = run(mixed_bn_sum, z, w, x, ws, g)
    r_out, r_mean, r_var, r_grads = run(mixed_bn_sum_reference, z, w, x, ws, g)
    assert out.dtype == torch.bfloat16 and mean.dtype == torch.float32
    close(out, r_out, **BF16)
    close(mean, r_mean, **F32)
    close(var, r_var, **F32)
    z_grad, w_grad = grads[0], grads[1]
    assert z_grad.dtype == torch.bfloat16 and w_grad.dtype == torch.float32
    close(z_grad, r_grads[0], **BF16)
    close(w_grad, r_grads[1], **F32_SUMS)  # fp32 reductions of the same bf16 data
    if skip:
        assert grads[2].dtype == torch.bfloat16 and grads[3].dtype == torch.float32
        close(grads[2], r_grads[2], **BF16)
        close(grads[3], r_grads[3], **F32_SUMS)
    # And against the float64 truth, within a few bf16 ulp.
    t_out = truth(z, w, x, ws)[0]
    close(out, t_out, **BF16_VS_FLOAT64)


@needs_kernels
def test_kernel_large_mean_small_std():
    """|mean| >> std: the shifted sums keep the variance accurate where sum(z^2) - n*mean^2 would not."""
    z, w, x, ws, _ = make(shape=(2, 2, 2, 4, 4))
    z = (z * 1e-2 + 300.0).contiguous()
    out, _, var = mixed_bn_sum(z, w, x, ws)
    t_out, _, t_var = truth(z, w, x, ws)
    close(var, t_var, rtol=1e-3, atol=1e-9)
    close(out, t_out, rtol=2e-3, atol=2e-3)


poisoned = poisoned_fixture(mbs)  # every buffer the launchers allocate starts as NaN


@needs_kernels
@pytest.mark.parametrize("skip", [True, False])
def test_kernel_poisoned_buffers_and_split_reductions(poisoned, monkeypatch, skip):
    """Small blocks and several reduction chunks (the GPU's split reductions, the last chunk partial),
    with NaN-poisoned outputs and partial-sum buffers."""
    monkeypatch.setattr(mbs, "_num_splits", lambda m, programs: 3)
    monkeypatch.setattr(mbs, "_BLOCK_R", 16)
    monkeypatch.setattr(mbs, "_BLOCK_R2", 16)
    monkeypatch.setattr(mbs, "_BLOCK_HW", 8)
    shape = (3, 2, 3, 5, 5)  # N*H*W = 50: chunks of 32 -> 2 chunks, the second partial; H*W = 25 -> 4 blocks
    z, w, x, ws, g = make(shape=shape, skip=skip, seed=7)
    out, mean, var, grads = run(mixed_bn_sum, z, w, x, ws, g)
    r_out, r_mean, r_var, r_grads = run(mixed_bn_sum_reference, z, w, x, ws, g)
    close_all((out, mean, var), (r_out, r_mean, r_var), ("out", "mean", "var"), **F32)
    close_all(grads, r_grads, GRAD_NAMES, **GRAD)


@needs_kernels
def test_kernel_non_contiguous_inputs_and_grad():
    """Channels-last / permuted inputs and an expanded (stride-0) incoming gradient are made contiguous."""
    z, w, x, ws, _ = make(shape=(2, 2, 3, 4, 3))
    z_nc = z.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    x_nc = x.contiguous(memory_format=torch.channels_last)
    assert not z_nc.is_contiguous() and not x_nc.is_contiguous()
    leaves = fresh_leaves(z_nc, w, x_nc, ws)
    mixed_bn_sum(*leaves)[0].sum().backward()
    r_leaves = fresh_leaves(z, w, x, ws)
    mixed_bn_sum_reference(*r_leaves)[0].sum().backward()
    close_all([t.grad for t in leaves], [t.grad for t in r_leaves], GRAD_NAMES, **GRAD)


# --------------------------------------------------------------------------------------------------
# The list form: K terms [N, C, H, W] read in place (views, mixed layouts), one gradient per term
# --------------------------------------------------------------------------------------------------

LAYOUTS = ("big", "big_cl", "cl", "slice", "plain", "unmerged")
"""How :func:`term_views` stores each term: a view ``big[e]`` of a batched [E, N, C, H, W] tensor (NCHW or
channels-last per edge), a channels-last tensor, a channel slice of a wider tensor (sample stride 2*C*H*W),
a tensor of its own, and one whose H and W do not merge into one stride (the one layout that is copied)."""


def term_views(z, layouts, seed=0):
    """The K terms of the stacked ``z`` as views in the given ``layouts`` (cycled): returns ``(leaves,
    terms)``, the autograd leaves the views come from and the K views (non-leaf tensors whose gradients
    autograd.grad returns), with the values of ``z``."""
    k, n, c, h, w_ = z.shape
    gen = torch.Generator().manual_seed(seed)
    z = z.detach()
    e = k + 2  # more edges than terms: the views sit at scattered positions
    slots = torch.randperm(e, generator=gen)[:k].tolist()
    big = torch.randn((e, n, c, h, w_), generator=gen).to(z.dtype)
    big_cl = channels_last(big.clone())
    wide = torch.randn((k, n, 2 * c, h, w_), generator=gen).to(z.dtype)
    with torch.no_grad():
        for i, s in enumerate(slots):
            big[s] = z[i]
            big_cl[s] = z[i]
            wide[i, :, c:] = z[i]
    leaves = {"big": big, "big_cl": big_cl, "wide": wide}
    own = []
    for i in range(k):
        layout = layouts[i % len(layouts)]
        if layout == "cl":
            own.append(z[i].contiguous(memory_format=torch.channels_last))
        elif layout == "plain":
            own.append(z[i].clone())
        elif layout == "unmerged":  # H innermost: stride(H) = 1, stride(W) = H
            own.append(z[i].transpose(2, 3).contiguous().transpose(2, 3))
        else:
            own.append(None)
    for i, t in enumerate(own):
        if t is not None:
            leaves[f"own{i}"] = t
    leaves = {name: t.requires_grad_(True) for name, t in leaves.items()}
    terms = []
    for i in range(k):
        layout = layouts[i % len(layouts)]
        if layout == "big":
            terms.append(leaves["big"][slots[i]])
        elif layout == "big_cl":
            terms.append(leaves["big_cl"][slots[i]])
        elif layout == "slice":
            terms.append(leaves["wide"][i][:, c:])
        else:
            terms.append(leaves[f"own{i}"])
    return leaves, terms


def run_terms(fn, z, w, x, ws, g, layouts, seed=0):
    """Forward and backward of ``fn`` on the terms of ``z`` as views (:func:`term_views`); returns
    ``(out, mean, var, [grad term_k ...], [grad w, grad x, grad w_skip])``."""
    _, terms = term_views(z, layouts, seed)
    w, x, ws = fresh_leaves(w, x, ws)
    out, mean, var = fn(terms, w, x, ws)
    others = [t for t in (w, x, ws) if t is not None]
    grads = torch.autograd.grad(out, [*terms, *others], g)
    term_grads, rest = list(grads[: len(terms)]), list(grads[len(terms) :])
    if x is None:
        rest = [rest[0], None, None]
    return out.detach(), mean, var, term_grads, rest


def test_reference_list_form_equals_stacked_form():
    z, w, x, ws, g = make(device="cpu")
    got = run_terms(mixed_bn_sum_reference, z, w, x, ws, g, LAYOUTS)
    ref = run(mixed_bn_sum_reference, z, w, x, ws, g)
    close_all(got[:3], ref[:3], ("out", "mean", "var"), exact=True, **F32)
    close_all(got[3], list(ref[3][0].unbind(0)), exact=True, **GRAD)
    close_all(got[4], ref[3][1:], GRAD_NAMES[1:], exact=True, **GRAD)


def test_list_argument_errors():
    z, w, x, ws, _ = make(device="cpu")
    terms = list(z.unbind(0))
    with pytest.raises(ValueError, match="K = 0"):
        mixed_bn_sum([], w[:0])
    with pytest.raises(ValueError, match=r"z\[1\]"):
        mixed_bn_sum([terms[0], z[1:2]], w[:2])  # a 5-D term
    with pytest.raises(ValueError, match="one shape"):
        mixed_bn_sum([terms[0], terms[1][:, :2]], w[:2])
    with pytest.raises(TypeError, match="dtype"):
        mixed_bn_sum([terms[0], terms[1].double()], w[:2])
    with pytest.raises(ValueError, match="K = 3"):
        mixed_bn_sum(terms, w[:2])
    with pytest.raises(ValueError, match="shape of one op output"):
        mixed_bn_sum(terms, w, x[:, :2], ws)


def test_torch_math_of_the_operator_list_form_float64():
    """float64 terms given as a list take the operator's PyTorch math, one gradient per term."""
    z, w, x, ws, g = make(dtype=torch.float64, device="cpu")
    op = lambda terms, *a: torch.ops.fastnas.mixed_bn_sum(terms, *a, EPS)  # noqa: E731
    got = run_terms(op, z, w, x, ws, g, LAYOUTS)
    ref = run_terms(mixed_bn_sum_reference, z, w, x, ws, g, LAYOUTS)
    close_all(got[:3], ref[:3], exact=True, **F64)
    close_all(got[3] + got[4], ref[3] + ref[4], exact=True, rtol=1e-10, atol=1e-12)


def check_list_form(shape, skip, layouts, dtype=torch.float32, seed=0):
    """The kernel path on the list form against autograd through the reference on the same views."""
    z, w, x, ws, g = make(shape=shape, skip=skip, dtype=dtype, wdtype=torch.float32, seed=seed)
    got = run_terms(mixed_bn_sum, z, w, x, ws, g, layouts, seed)
    ref = run_terms(mixed_bn_sum_reference, z, w, x, ws, g, layouts, seed)
    k, n, c, h, w_ = shape
    out, mean, var, term_grads, rest = got
    assert out.dtype == dtype and out.shape == (n, c, h, w_) and out.is_contiguous()
    assert mean.shape == var.shape == (k, c) and mean.dtype == torch.float32
    assert len(term_grads) == k
    assert all(t.dtype == dtype and t.shape == (n, c, h, w_) for t in term_grads)
    for a, b in zip(rest, ref[4]):
        assert (a is None) == (b is None)
    if dtype == torch.float32:
        close_all(got[:3], ref[:3], ("out", "mean", "var"), **F32)
        close_all(term_grads, ref[3], [f"grad z[{i}]" for i in range(k)], **GRAD)
        close_all(rest, ref[4], GRAD_NAMES[1:], **GRAD)
    else:
        # bf16 terms: both paths compute in fp32 from the same bf16 values and round the result once (an
        # ulp of bf16, 2**-8 relative, apart where the fp32 sums round to neighbouring bf16 values); the
        # statistics and weight gradients are fp32 reductions of those values in another order.
        close(out, ref[0], **BF16)
        close_all(got[1:3], ref[1:3], ("mean", "var"), **F32)
        close_all(term_grads, ref[3], [f"grad z[{i}]" for i in range(k)], **BF16)
        close(rest[0], ref[4][0], **F32_SUMS)
        if skip:
            close(rest[1], ref[4][1], **BF16)
            close(rest[2], ref[4][2], **F32_SUMS)
        close(out, truth(z, w, x, ws)[0], **BF16_VS_FLOAT64)


@needs_kernels
@pytest.mark.parametrize(
    "shape,skip,layouts",
    [
        ((1, 2, 3, 3, 4), True, ("big",)),  # K = 1
        ((3, 2, 3, 3, 4), False, ("big",)),  # views into one batched tensor
        ((3, 2, 3, 3, 4), True, ("big_cl", "cl", "slice")),  # channels-last and strided sample stride
        ((6, 2, 3, 4, 3), True, LAYOUTS),  # every layout, one copy (the unmerged term)
        ((8, 1, 2, 3, 3), False, ("slice", "big")),  # exactly one launch of 8 terms
        ((11, 2, 2, 2, 3), True, ("big", "cl", "plain")),  # two chunks, the second partial
    ],
)
def test_kernel_list_form_matches_reference_fp32(shape, skip, layouts):
    check_list_form(shape, skip, layouts, seed=sum(shape))


@needs_kernels
@pytest.mark.parametrize(
    "shape,skip,layouts",
    [
        ((3, 2, 3, 3, 4), True, ("big", "big_cl", "slice")),
        ((10, 2, 2, 3, 2), False, ("cl", "big")),  # two chunks: the fp32 partial sum of 16-bit terms
    ],
)
def test_kernel_list_form_matches_reference_bf16(shape, skip, layouts):
    check_list_form(shape, skip, layouts, dtype=torch.bfloat16, seed=sum(shape))


@needs_kernels
@pytest.mark.parametrize("skip", [True, False])
def test_kernel_list_form_poisoned_split_reductions(poisoned, monkeypatch, skip):
    """Several reduction chunks, small blocks, NaN-poisoned buffers, K > 8 (two launches per kernel)."""
    monkeypatch.setattr(mbs, "_num_splits", lambda m, programs: 3)
    monkeypatch.setattr(mbs, "_BLOCK_R", 16)
    monkeypatch.setattr(mbs, "_BLOCK_R2", 16)
    monkeypatch.setattr(mbs, "_BLOCK_HW", 8)
    check_list_form((9, 2, 2, 2, 5), skip, ("big", "cl", "slice"), seed=3)


@needs_kernels
def test_kernel_strided_incoming_gradient_and_weights():
    """The incoming gradient as a channel slice of a wider gradient (a node's concat), or expanded
    (stride 0), and weights that are a strided row of alpha: read in place, same results."""
    z, w, x, ws, _ = make(shape=(3, 2, 3, 3, 4))
    alpha = torch.zeros(2, 6)
    alpha[1, ::2] = w
    for make_grad in (
        lambda o: torch.randn(o.shape[0], 2 * o.shape[1], *o.shape[2:])[:, o.shape[1] :],
        lambda o: torch.ones(()).expand(o.shape),
    ):
        results = []
        for fn, weights in ((mixed_bn_sum, alpha[1, ::2]), (mixed_bn_sum_reference, w)):
            torch.manual_seed(0)
            terms = [t.requires_grad_(True) for t in fresh_leaves(*z.unbind(0))]
            w_, x_, ws_ = fresh_leaves(weights, x, ws)
            out = fn(terms, w_, x_, ws_)[0]
            grad = make_grad(out)
            results.append(torch.autograd.grad(out, [*terms, w_, x_, ws_], grad))
        close_all(results[0], results[1], **GRAD)


def test_backward_without_grad_out_gives_no_gradients():
    """The autograd registration does not materialise gradients: a missing gradient of ``out`` (only
    the non-differentiable statistics used) returns None for every input, launching nothing."""
    from types import SimpleNamespace

    grads = mbs._backward(SimpleNamespace(num_z=3), None, None, None)
    assert grads == ([None, None, None], None, None, None, None)


def test_launches_of_the_list_form():
    """On the launch counter (meta tensors as CUDA): 2 launches forward and 3 backward for strided and
    channels-last terms and a strided incoming gradient, and no other operator inside the op (no
    stack, no contiguous copy, no clone of the gradient, no zeros for the statistics' gradients)."""
    pytest.importorskip("triton")
    from benchmarks.launches import LaunchCounter, emulate_cuda_dispatch

    k, n, c, hw = 3, 2, 4, 5
    big = torch.randn(k + 1, n, c, hw, hw, device="meta", requires_grad=True)
    cl = torch.randn(n, c, hw, hw, device="meta").contiguous(memory_format=torch.channels_last)
    cl.requires_grad_(True)
    w = torch.randn(k, device="meta", requires_grad=True)
    x = torch.randn(n, c, hw, hw, device="meta", requires_grad=True)
    ws = torch.randn((), device="meta", requires_grad=True)
    with emulate_cuda_dispatch(), LaunchCounter("meta") as counter:
        out, _, _ = mixed_bn_sum([big[2], cl, big[0]], w, x, ws)
        wide = torch.cat([out, x], 1)  # grad out: a channel slice of the concat's gradient
        wide.backward(torch.empty_like(wide))
    ops = {name: s for name, s in counter.ops.items() if name.startswith("mixed_bn_sum")}
    assert set(ops) == {"mixed_bn_sum", "mixed_bn_sum_backward"}, sorted(ops)
    assert (ops["mixed_bn_sum"].calls, ops["mixed_bn_sum"].launches) == (1, 2)
    assert (ops["mixed_bn_sum_backward"].calls, ops["mixed_bn_sum_backward"].launches) == (1, 3)
    assert "zeros" not in counter.ops and "stack" not in counter.ops, sorted(counter.ops)


# --------------------------------------------------------------------------------------------------
# Dispatch, reference switch, torch.compile, opcheck
# --------------------------------------------------------------------------------------------------


@needs_kernels
def test_reference_switch_skips_the_kernels(monkeypatch):
    z, w, x, ws, g = make()
    forced, fused = check_reference_switch(monkeypatch, mbs, lambda: run(mixed_bn_sum, z, w, x, ws, g))
    close(forced[0], fused[0], **F32)
    close_all(forced[3], fused[3], GRAD_NAMES, **GRAD)


def test_fake_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(3, 2, 4, 5, 5, dtype=torch.bfloat16)
        w = torch.empty(3)
        x = torch.empty(2, 4, 5, 5, dtype=torch.bfloat16)
        ws = torch.empty(())
        out, mean, var = torch.ops.fastnas.mixed_bn_sum([z], w, x, ws, EPS)
        (gz,), gw, gx, gws = torch.ops.fastnas.mixed_bn_sum_backward(out, [z], w, x, ws, mean, var, EPS)
        assert out.shape == (2, 4, 5, 5) and out.dtype == torch.bfloat16
        assert mean.shape == var.shape == (3, 4) and mean.dtype == torch.float32
        assert gz.shape == z.shape and gz.dtype == torch.bfloat16
        assert gw.shape == (3,) and gw.dtype == torch.float32
        assert gx.shape == x.shape and gws.shape == ()
        # the list form: K terms in, one gradient per term out (contiguous, whatever the terms' layout)
        terms = [z[0], z[1].contiguous(memory_format=torch.channels_last), z[2]]
        out, mean, var = torch.ops.fastnas.mixed_bn_sum(terms, w, None, None, EPS)
        assert out.shape == (2, 4, 5, 5) and out.is_contiguous() and mean.shape == (3, 4)
        grads, gw, gx, gws = torch.ops.fastnas.mixed_bn_sum_backward(
            out, terms, w, None, None, mean, var, EPS
        )
        assert len(grads) == 3 and all(t.shape == (2, 4, 5, 5) and t.is_contiguous() for t in grads)
        assert gw.shape == (3,) and gx.numel() == 0 and gws.numel() == 0


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op(monkeypatch):
    calls = count_launches(monkeypatch, mbs, "forward")
    z, w, x, ws, g = make()

    def step(z, w, x, ws):
        out, mean, var = mixed_bn_sum(z, w, x, ws)
        return out * 2.0, mean, var

    _, got, ref = compile_and_reference(step, lambda fn: run(fn, z, w, x, ws, g), calls)
    close_all(got[:3], ref[:3], ("out", "mean", "var"), **F32)
    close_all(got[3], ref[3], GRAD_NAMES, **GRAD)


@needs_kernels
def test_torch_compile_fullgraph_traces_the_list_form(monkeypatch):
    """The list form under ``torch.compile(fullgraph=True)``: views of a batched tensor and a
    channels-last term go to the operator as they are; one gradient per term."""
    calls = count_launches(monkeypatch, mbs, "forward", "backward")
    z, w, x, ws, g = make(shape=(3, 2, 3, 3, 4))

    def step(terms, w, x, ws):
        out, mean, var = mixed_bn_sum(terms, w, x, ws)
        return out * 2.0, mean, var

    _, got, ref = compile_and_reference(step, lambda fn: run_terms(fn, z, w, x, ws, g, ("big", "cl")), calls)
    close_all(got[:3], ref[:3], ("out", "mean", "var"), **F32)
    close_all(got[3] + got[4], ref[3] + ref[4], **GRAD)


@needs_kernels
def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the operator
    on the kernel path (tiny shapes; each check runs the interpreted kernels a few times)."""
    z, w, x, ws, _ = make(shape=(2, 2, 2, 3, 3))
    z, w, x, ws = (t.requires_grad_(True) for t in (z, w, x, ws))
    torch.library.opcheck(torch.ops.fastnas.mixed_bn_sum.default, ([z], w, x, ws, EPS))
    torch.library.opcheck(torch.ops.fastnas.mixed_bn_sum.default, ([z], w, None, None, EPS))


@needs_kernels
def test_opcheck_list_form():
    """opcheck of the list form: terms that are views of one batched tensor and a channels-last one."""
    z, w, x, ws, _ = make(shape=(3, 2, 2, 3, 3))
    _, terms = term_views(z, ("big", "cl", "big_cl"))
    w, x, ws = (t.requires_grad_(True) for t in (w, x, ws))
    torch.library.opcheck(torch.ops.fastnas.mixed_bn_sum.default, (terms, w, x, ws, EPS))
    torch.library.opcheck(torch.ops.fastnas.mixed_bn_sum.default, (terms[:2], w[:2], None, None, EPS))
