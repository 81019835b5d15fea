"""fastnas.kernels.edge_group_sum: all edges leaving one DARTS state in one op (BN folded in).

The reference (``F.batch_norm`` per term row + weighted sums) is checked against per-edge
``mixed_bn_sum_reference`` in float64; the operators' float64 PyTorch math against autograd through the
reference (1e-10) and by gradcheck; the Triton path (interpreter on a CPU-only machine, TRITON_INTERPRET=1
set by conftest.py) against the reference and against ``mixed_bn_sum`` called per edge, in fp32 and bf16,
for the DARTS normal-cell pattern, the reduction pattern, P-DARTS-like edge subsets, strided and
channels-last inputs and missing output gradients. Shapes are tiny: every interpreted program costs
milliseconds.

Tolerances: fp32 kernel against the fp32 reference: the same math with sums in another order (outputs and
statistics ``F32``; gradients 2e-5: two passes of sums, BN backward subtracts means of products; grad
weights ``F32_SUMS``: sums over every element). bf16: both paths compute in fp32 from the same bf16 inputs
and round the result once, so a few bf16 ulp (2^-8 relative) of the result's scale (``close_scaled``).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import (
    DEVICE,
    F32,
    F32_SUMS,
    channels_last,
    check_reference_switch,
    close,
    close_all,
    close_scaled,
    compile_and_reference,
    count_launches,
    needs_kernels,
    poisoned_fixture,
)

from fastnas.kernels import edge_group_sum as egs
from fastnas.kernels.edge_group_sum import edge_group_sum, edge_group_sum_reference
from fastnas.kernels.mixed_bn_sum import mixed_bn_sum, mixed_bn_sum_reference

EPS = 1e-5
SHAPE = (2, 2, 3, 3)  # N, C, H, W of one row
GRAD = {"rtol": 2e-5, "atol": 2e-5}
F64_TIGHT = {"rtol": 1e-10, "atol": 1e-10}
K = 8  # weight columns (the DARTS space: none, max, avg, skip, sep3, sep5, dil3, dil5)


# --------------------------------------------------------------------------------------------------
# Cases: (terms, term_edges, term_cols, normalize, num_edges)
# --------------------------------------------------------------------------------------------------


def _rand(shape, gen, offset=0.5):
    """Random non-zero values with a per-channel scale and offset."""
    c = shape[-3]
    lead = shape[:-4]
    scale = 1.0 + torch.rand(*lead, 1, c, 1, 1, generator=gen)
    shift = offset * torch.randn(*lead, 1, c, 1, 1, generator=gen)
    return torch.randn(shape, generator=gen) * scale + shift


def normal_cell(shape=SHAPE, seed=0, edges=4):
    """DARTS normal cell, one state: 4 batched conv ops over all E edges, 2 shared pools, the identity."""
    gen = torch.Generator().manual_seed(seed)
    every = list(range(edges))
    terms = [_rand((edges, *shape), gen) for _ in range(4)] + [_rand(shape, gen) for _ in range(3)]
    term_edges = [every] * 7
    term_cols = [[k] * edges for k in (4, 5, 6, 7, 1, 2, 3)]
    return terms, term_edges, term_cols, [True] * 6 + [False], edges


def reduction_cell(shape=SHAPE, seed=1):
    """Reduction pattern: no identity (a FactorizedReduce is one more batched BN term), 3 edges."""
    terms, te, tc, _, _ = normal_cell(shape, seed, edges=3)
    gen = torch.Generator().manual_seed(seed + 100)
    terms = [*terms[:6], _rand((3, *shape), gen)]
    return terms, te, [*tc[:6], [3] * 3], [True] * 7, 3


def pdarts_case(shape=SHAPE, seed=2):
    """P-DARTS-like per-edge op subsets, E = 4: a batched term covering edges 3 and 1 only (rows not in
    edge order), one covering edges 0, 2, 3, a pool shared by edges 1 and 2, the identity in edge 2 only
    (edge 0 has one BN term; the columns differ per edge)."""
    gen = torch.Generator().manual_seed(seed)
    terms = [_rand((2, *shape), gen), _rand((3, *shape), gen), _rand(shape, gen), _rand(shape, gen)]
    term_edges = [[3, 1], [0, 2, 3], [1, 2], [2]]
    term_cols = [[5, 2], [0, 1, 4], [3, 6], [7]]
    return terms, term_edges, term_cols, [True, True, True, False], 4


def one_term_edge_case(shape=SHAPE, seed=3):
    """An edge (2) with a single identity term, an edge (1) with a single BN term, edge 0 with two."""
    gen = torch.Generator().manual_seed(seed)
    terms = [_rand((2, *shape), gen), _rand(shape, gen), _rand(shape, gen)]
    return terms, [[0, 1], [0], [2]], [[1, 1], [0], [2]], [True, True, False], 3


CASES = {
    "normal": normal_cell,
    "reduction": reduction_cell,
    "pdarts": pdarts_case,
    "one_term": one_term_edge_case,
}


def make_weights(num_edges, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed + 50)
    return torch.softmax(torch.randn(num_edges, K, generator=gen), 1).to(dtype)


def make_grads(num_edges, shape=SHAPE, seed=0, none=()):
    gen = torch.Generator().manual_seed(seed + 70)
    return [None if e in none else torch.randn(shape, generator=gen) for e in range(num_edges)]


def cast(ts, dtype, device=DEVICE):
    return [None if t is None else t.to(device=device, dtype=dtype) for t in ts]


def run(fn, terms, te, tc, norm, w, grads, build=None, requires=None):
    """Forward and backward of ``fn`` from fresh leaves (``build`` maps the leaves to the terms passed,
    e.g. views); returns (outs, means, vars, grads of the leaves, grad weights)."""
    leaves = [t.detach().clone().requires_grad_(requires is None or requires[i]) for i, t in enumerate(terms)]
    wl = w.detach().clone().requires_grad_()
    args = build(leaves) if build is not None else leaves
    outs, means, variances = fn(args, te, tc, norm, wl)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return [o.detach() for o in outs], means, variances, [t.grad for t in leaves], wl.grad


def check_against_reference(got, want, bf16=False):
    outs, means, variances, grads, gw = got
    r_outs, r_means, r_vars, r_grads, r_gw = want
    if bf16:
        for a, b in zip(outs + grads, r_outs + r_grads):
            assert a.dtype == torch.bfloat16
            close_scaled(a, b, 2e-2)
        close_all(means + variances, r_means + r_vars, rtol=1e-5, atol=1e-5)
        close_scaled(gw, r_gw, 2e-2)
        return
    close_all(outs, r_outs, **F32)
    close_all(means + variances, r_means + r_vars, **F32)
    close_all(grads, r_grads, **GRAD)
    close(gw, r_gw, **F32_SUMS)


# --------------------------------------------------------------------------------------------------
# Reference and the operators' float64 PyTorch math
# --------------------------------------------------------------------------------------------------


def per_edge_mixed(terms, te, tc, norm, w, fn):
    """Every edge through ``fn`` (mixed_bn_sum or its reference): its BN terms as a list, its identity
    term (at most one per edge) as ``x``."""
    outs = []
    for e in range(w.shape[0]):
        zs, ks, x, ws = [], [], None, None
        for t, z in enumerate(terms):
            if e not in te[t]:
                continue
            i = te[t].index(e)
            row = z[i] if z.dim() == 5 else z
            if norm[t]:
                zs.append(row)
                ks.append(tc[t][i])
            else:
                x, ws = row, w[e, tc[t][i]]
        # mixed_bn_sum needs a BN term: an identity-only edge is w * x
        outs.append(fn(zs, w[e, ks], x, ws, EPS)[0] if zs else ws * x)
    return outs


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_mixed_bn_sum_per_edge_float64(case):
    terms, te, tc, norm, e = CASES[case]()
    terms = cast(terms, torch.float64, "cpu")
    w = make_weights(e, dtype=torch.float64)
    outs, means, variances = edge_group_sum_reference(terms, te, tc, norm, w, EPS)
    want = per_edge_mixed(terms, te, tc, norm, w, mixed_bn_sum_reference)
    close_all(outs, want, exact=True, **F64_TIGHT)
    for t, z in enumerate(terms):
        rows = z.shape[0] if z.dim() == 5 else 1
        assert means[t].shape == variances[t].shape == ((rows, 2) if norm[t] else (0, 2))
        assert means[t].dtype == torch.float64 and not means[t].requires_grad
        if norm[t]:
            flat = z.reshape(rows, *z.shape[-4:]).transpose(1, 2).reshape(rows, 2, -1)
            close_all([means[t], variances[t]], [flat.mean(-1), flat.var(-1, correction=0)], exact=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_float64_math_matches_reference(case):
    """The operators' PyTorch math (float64) against autograd through the reference, to 1e-10, with an
    edge whose output gets no gradient."""
    terms, te, tc, norm, e = CASES[case]()
    terms = cast(terms, torch.float64, "cpu")
    w = make_weights(e, dtype=torch.float64)
    grads = cast(make_grads(e, none=(1,)), torch.float64, "cpu")

    def op(ts, te, tc, norm, w):
        edges, cols, sizes = egs._flatten(te, tc)
        outs, mean, var = torch.ops.fastnas.edge_group_sum(ts, edges, cols, sizes, norm, w, EPS)
        return outs, egs._split_stats(mean, ts, norm), egs._split_stats(var, ts, norm)

    got = run(op, terms, te, tc, norm, w, grads)
    want = run(edge_group_sum_reference, terms, te, tc, norm, w, grads)
    close_all(
        got[0] + got[1] + got[2] + got[3], want[0] + want[1] + want[2] + want[3], exact=True, **F64_TIGHT
    )
    torch.testing.assert_close(got[4], want[4], **F64_TIGHT)
    assert torch.equal(got[4][1], torch.zeros_like(got[4][1]))


def test_gradcheck_float64_operator():
    """gradcheck of the operator (float64: its PyTorch math and backward operator) on a tiny P-DARTS
    case: every output, the weights and all terms."""
    terms, te, tc, norm, e = pdarts_case(shape=(2, 1, 2, 2))
    terms = [t.double().requires_grad_() for t in terms]
    w = make_weights(e, dtype=torch.float64).requires_grad_()
    edges, cols, sizes = egs._flatten(te, tc)

    def fn(w, *ts):
        outs, _, _ = torch.ops.fastnas.edge_group_sum(list(ts), edges, cols, sizes, norm, w, EPS)
        return tuple(outs)

    assert torch.autograd.gradcheck(fn, (w, *terms))


def test_argument_errors():
    terms, te, tc, norm, e = normal_cell()
    w = make_weights(e)
    with pytest.raises(ValueError, match="edges \\[3\\] have no term"):
        edge_group_sum([terms[4]], [[0, 1, 2]], [[1, 1, 1]], [True], w)
    with pytest.raises(ValueError, match="rows"):
        edge_group_sum([terms[0]], [[0, 1, 2]], [[1, 1, 1]], [True], w)
    with pytest.raises(ValueError, match="lists an edge twice"):
        edge_group_sum([terms[4]], [[0, 1, 2, 3, 3]], [[1] * 5], [True], w)
    with pytest.raises(ValueError, match="outside `weights`"):
        edge_group_sum([terms[4]], [[0, 1, 2, 3]], [[1, 1, 1, K]], [True], w)
    with pytest.raises(ValueError, match="one entry per term"):
        edge_group_sum(terms, te, tc, norm[:-1], w)
    with pytest.raises(TypeError, match="one dtype"):
        edge_group_sum([terms[4], terms[5].double()], [[0, 1, 2, 3]] * 2, [[1] * 4] * 2, [True] * 2, w)
    with pytest.raises(ValueError, match="rows of shape"):
        edge_group_sum([terms[4], terms[5][:, :1]], [[0, 1, 2, 3]] * 2, [[1] * 4] * 2, [True] * 2, w)


# --------------------------------------------------------------------------------------------------
# Kernel path
# --------------------------------------------------------------------------------------------------

poisoned = poisoned_fixture(egs)  # every buffer the launchers allocate starts as NaN


@needs_kernels
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference_fp32(case, poisoned):
    terms, te, tc, norm, e = CASES[case]()
    terms, w = cast(terms, torch.float32), make_weights(e).to(DEVICE)
    grads = cast(make_grads(e), torch.float32)
    got = run(edge_group_sum, terms, te, tc, norm, w, grads)
    check_against_reference(got, run(edge_group_sum_reference, terms, te, tc, norm, w, grads))
    if case == "normal":  # and against mixed_bn_sum per edge (kernels), outputs and gradients
        leaves = [t.detach().clone().requires_grad_() for t in terms]
        wl = w.detach().clone().requires_grad_()
        outs = per_edge_mixed(leaves, te, tc, norm, wl, mixed_bn_sum)
        torch.autograd.backward(outs, grads)
        close_all(got[0], outs, **F32)
        close_all(got[3], [t.grad for t in leaves], **GRAD)
        close(got[4], wl.grad, **F32_SUMS)


@needs_kernels
def test_kernel_split_reductions_and_small_blocks(monkeypatch, poisoned):
    """The GPU's split reductions (3 chunks, the last partial) and several H*W blocks, NaN-poisoned."""
    monkeypatch.setattr(egs, "_num_splits", lambda m, programs: 3)
    monkeypatch.setattr(egs, "_BLOCK_R", 16)
    monkeypatch.setattr(egs, "_BLOCK_HW", 8)
    shape = (2, 2, 5, 5)  # N*H*W = 50: chunks of 32 -> 2 chunks; H*W = 25 -> 4 blocks
    terms, te, tc, norm, e = pdarts_case(shape=shape, seed=5)
    terms, w = cast(terms, torch.float32), make_weights(e, seed=5).to(DEVICE)
    grads = cast(make_grads(e, shape=shape, seed=5), torch.float32)
    got = run(edge_group_sum, terms, te, tc, norm, w, grads)
    check_against_reference(got, run(edge_group_sum_reference, terms, te, tc, norm, w, grads))


@needs_kernels
def test_kernel_matches_reference_bf16():
    terms, te, tc, norm, e = normal_cell(seed=4)
    terms, w = cast(terms, torch.bfloat16), make_weights(e, seed=4).to(DEVICE)  # fp32 weights
    grads = cast(make_grads(e, seed=4), torch.bfloat16)
    got = run(edge_group_sum, terms, te, tc, norm, w, grads)
    assert got[4].dtype == torch.float32 and got[1][0].dtype == torch.float32
    check_against_reference(got, run(edge_group_sum_reference, terms, te, tc, norm, w, grads), bf16=True)


@needs_kernels
def test_kernel_large_mean_small_std():
    """|mean| >> std: the shifted sums keep the variance accurate where sum(z^2) - n*mean^2 would not."""
    terms, te, tc, norm, e = one_term_edge_case(shape=(2, 2, 4, 4))
    terms = [(t * 1e-2 + 300.0) for t in terms]
    w = make_weights(e)
    outs, _, variances = edge_group_sum(cast(terms, torch.float32), te, tc, norm, w.to(DEVICE))
    r_outs, _, r_vars = edge_group_sum_reference(cast(terms, torch.float64, "cpu"), te, tc, norm, w.double())
    close_all(variances[:2], r_vars[:2], rtol=1e-3, atol=1e-9)
    close_all(outs[:2], r_outs[:2], rtol=2e-3, atol=2e-3)


def _views(leaves):
    """Term 0: rows 1..2 of a batched channels-last tensor (a strided subset, rows out of the base's
    order); term 1: channels-last per row; term 2: a channel slice of a wider tensor; term 3: H and W
    transposed (they do not merge: copied)."""
    return [leaves[0][1:3], leaves[1], leaves[2][:, 1:3], leaves[3].transpose(2, 3)]


@needs_kernels
def test_kernel_views_channels_last_and_strided_grads():
    """Strided and channels-last terms read in place, a non-mergeable one copied; strided incoming
    gradients (an expanded one, a channel slice); results as from contiguous copies."""
    gen = torch.Generator().manual_seed(9)
    n, c, h, w_ = SHAPE
    bases = [
        channels_last(_rand((4, n, c, h, w_), gen)),
        channels_last(_rand((3, n, c, h, w_), gen)),
        _rand((n, c + 2, h, w_), gen),
        _rand((n, c, w_, h), gen),
    ]
    te, tc, norm = (
        [[1, 2], [0, 1, 2], [0, 2], [1]],
        [[4, 5], [6, 6, 6], [1, 2], [3]],
        [True, True, True, False],
    )
    wbase = make_weights(3, seed=9).repeat(1, 2)
    w = wbase[:, ::2]  # a strided [E, K] view
    wide = torch.randn(n, 2 * c, h, w_, generator=gen)
    grads = [wide[:, c:], torch.randn(1, c, 1, 1, generator=gen).expand(n, c, h, w_), torch.randn(SHAPE)]
    bases, grads = cast(bases, torch.float32), cast(grads, torch.float32)
    got = run(edge_group_sum, bases, te, tc, norm, w.to(DEVICE), grads, build=_views)
    want = run(edge_group_sum_reference, bases, te, tc, norm, w.to(DEVICE), grads, build=_views)
    check_against_reference(got, want)


@needs_kernels
def test_kernel_missing_output_grads_and_unwanted_inputs(monkeypatch):
    """Outputs without gradient contribute nothing (their weights' gradients are 0); a term that does
    not require grad gets none; an architecture-only pass (the terms' producer does not run) launches
    only the reduction and the weight-gradient program."""
    terms, te, tc, norm, e = pdarts_case()
    terms, w = cast(terms, torch.float32), make_weights(e).to(DEVICE)
    grads = cast(make_grads(e, none=(0, 2)), torch.float32)
    requires = [True, False, True, True]
    got = run(edge_group_sum, terms, te, tc, norm, w, grads, requires=requires)
    want = run(edge_group_sum_reference, terms, te, tc, norm, w, grads, requires=requires)
    assert got[3][1] is None
    keep = [0, 2, 3]
    got_kept = (*got[:3], [got[3][i] for i in keep], got[4])
    check_against_reference(got_kept, (*want[:3], [want[3][i] for i in keep], want[4]))
    assert torch.equal(got[4][[0, 2]], torch.zeros(2, K))
    # only the weights' gradient wanted: the terms come from an op whose backward does not run
    from benchmarks.launches import record_triton_launches

    leaves = [t.detach().clone().requires_grad_() for t in terms]
    wl = w.detach().clone().requires_grad_()
    outs, _, _ = edge_group_sum([t * 1.0 for t in leaves], te, tc, norm, wl)
    with record_triton_launches(run=True) as launched:
        (gw,) = torch.autograd.grad([outs[1], outs[3]], [wl], [grads[1], grads[3]])
    assert launched == ["_backward_reduce_kernel", "_backward_finish_kernel"], launched
    close(gw, got[4], **F32_SUMS)


def test_launches_normal_cell():
    """On the launch counter (meta tensors as CUDA), E = 4 edges of a normal cell in one op: 2 launches
    forward, 2 backward, and no other operator inside the ops (no stack, no add of gradients, no zeros,
    no copies), with a strided incoming gradient and an output without gradient."""
    pytest.importorskip("triton")
    from benchmarks.launches import LaunchCounter, emulate_cuda_dispatch

    n, c, hw = 2, 4, 5
    terms, te, tc, norm, e = normal_cell(shape=(n, c, hw, hw))

    def call():
        leaves = [t.to("meta").requires_grad_() for t in terms]
        w = torch.randn(e, K, device="meta", requires_grad=True)
        outs, _, _ = edge_group_sum(leaves, te, tc, norm, w)
        wide = torch.cat([outs[0], outs[1]], 1)  # grad out: channel slices of the concat's gradient
        torch.autograd.backward([wide, outs[3]], [torch.empty_like(wide), torch.empty_like(outs[3])])

    with emulate_cuda_dispatch():
        with LaunchCounter("meta") as first:  # the op bodies run on meta tensors only on the counter
            call()
        with LaunchCounter("meta") as counter:
            call()
    # the structure's device table: one host-to-device copy per op on the first call, then cached
    assert first.ops["edge_group_sum/_to_copy"].calls == 1
    assert first.ops["edge_group_sum_backward/_to_copy"].calls == 1
    ops = {name: s for name, s in counter.ops.items() if name.startswith("edge_group_sum")}
    assert set(ops) == {"edge_group_sum", "edge_group_sum_backward"}, sorted(ops)
    assert (ops["edge_group_sum"].calls, ops["edge_group_sum"].launches) == (1, 2)
    assert (ops["edge_group_sum_backward"].calls, ops["edge_group_sum_backward"].launches) == (1, 2)
    assert not {"zeros", "stack", "add", "copy_"} & set(counter.ops), sorted(counter.ops)


# --------------------------------------------------------------------------------------------------
# Dispatch, fake tensors, torch.compile, opcheck
# --------------------------------------------------------------------------------------------------


def tiny_case():
    """E = 2: a batched term, a shared pool, the identity (the smallest structure with all kinds)."""
    gen = torch.Generator().manual_seed(11)
    shape = (2, 2, 2, 2)
    terms = [_rand((2, *shape), gen), _rand(shape, gen), _rand(shape, gen)]
    return terms, [[0, 1], [0, 1], [1]], [[4, 4], [1, 2], [3]], [True, True, False], 2


@needs_kernels
def test_reference_switch_skips_the_kernels(monkeypatch):
    terms, te, tc, norm, e = tiny_case()
    terms, w = cast(terms, torch.float32), make_weights(e).to(DEVICE)
    grads = cast(make_grads(e, shape=(2, 2, 2, 2)), torch.float32)
    forced, fused = check_reference_switch(
        monkeypatch, egs, lambda: run(edge_group_sum, terms, te, tc, norm, w, grads)
    )
    check_against_reference(fused, forced)


def test_fake_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    terms, te, tc, norm, e = normal_cell()
    edges, cols, sizes = egs._flatten(te, tc)
    terms = [t.to(torch.bfloat16) for t in terms]
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in terms]
        w = torch.empty(e, K)
        outs, mean, var = torch.ops.fastnas.edge_group_sum(fakes, edges, cols, sizes, norm, w, EPS)
        assert len(outs) == e and all(o.shape == SHAPE and o.dtype == torch.bfloat16 for o in outs)
        assert mean.shape == var.shape == (4 * e + 2, 2) and mean.dtype == torch.float32
        grads = [outs[0], None, outs[2], outs[3]]
        want = [True, False, True, True, False, True, True]
        tg, gw = torch.ops.fastnas.edge_group_sum_backward(
            grads, fakes, edges, cols, sizes, norm, w, mean, var, EPS, want, True
        )
        assert [tuple(g.shape) for g in tg] == [tuple(t.shape) if f else (0,) for t, f in zip(terms, want)]
        assert all(g.dtype == torch.bfloat16 for g in tg)
        assert gw.shape == (e, K) and gw.dtype == torch.float32


@needs_kernels
def test_torch_compile_fullgraph_traces_the_op(monkeypatch):
    calls = count_launches(monkeypatch, egs, "forward", "backward")
    terms, te, tc, norm, e = tiny_case()
    terms, w = cast(terms, torch.float32), make_weights(e).to(DEVICE)
    grads = cast(make_grads(e, shape=(2, 2, 2, 2)), torch.float32)

    def step(ts, te, tc, norm, w):
        outs, means, variances = edge_group_sum(ts, te, tc, norm, w)
        return [o * 2.0 for o in outs], means, variances

    _, got, ref = compile_and_reference(step, lambda fn: run(fn, terms, te, tc, norm, w, grads), calls)
    check_against_reference(got, ref)


@needs_kernels
def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the operator
    on the kernel path (tiny shapes), with a channels-last batched term."""
    terms, te, tc, norm, e = tiny_case()
    terms = [channels_last(terms[0]), *terms[1:]]
    terms = [t.to(DEVICE).requires_grad_() for t in terms]
    w = make_weights(e).to(DEVICE).requires_grad_()
    edges, cols, sizes = egs._flatten(te, tc)
    torch.library.opcheck(torch.ops.fastnas.edge_group_sum.default, (terms, edges, cols, sizes, norm, w, EPS))
