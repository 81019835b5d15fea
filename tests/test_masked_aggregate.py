"""fastnas.kernels.masked_aggregate: the Triton masked node aggregation against its reference.

The reference (PyTorch, autograd) is checked against an independent float64 formula and by gradcheck; the
kernel path (Triton; on a CPU-only machine in the interpreter, TRITON_INTERPRET=1 set by conftest.py) is
checked against the reference for the output and the gradients of every term and of the weights, over
masks (none, all on, all off, random bool, float and integer), weights (none, another dtype than the terms),
T = 1, 3, 8 and 11 (two launches), odd sizes and layouts. Shapes are tiny: every interpreted launch costs
milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import (
    BF16,
    BF16_VS_FLOAT64,
    DEVICE,
    F32,
    F64,
    check_reference_switch,
    close,
    close_all,
    compile_and_reference,
    count_launches,
    fresh_leaves,
    needs_kernels,
    poisoned_fixture,
)
from kernel_testing import F32_SUMS as GRAD_W  # grad w: fp32 reductions of the same data in another order

from fastnas.kernels import masked_aggregate as ma
from fastnas.kernels.masked_aggregate import masked_aggregate, masked_aggregate_reference

SHAPE = (2, 3, 5, 7)  # 210 elements: odd sizes, not a multiple of any block


def make_mask(kind: str, num: int, gen: torch.Generator, device=DEVICE) -> torch.Tensor | None:
    """None, all on, all off, random bool (at least one on and one off when num > 1), float, integer."""
    if kind == "none":
        return None
    if kind == "on":
        return torch.ones(num, dtype=torch.bool, device=device)
    if kind == "off":
        return torch.zeros(num, dtype=torch.bool, device=device)
    bits = torch.rand(num, generator=gen) < 0.5
    if num > 1:
        bits[0], bits[-1] = True, False
    if kind == "bool":
        return bits.to(device)
    if kind == "float":  # non-zero = active; the values do not scale anything
        return (bits.float() * (0.5 + torch.rand(num, generator=gen))).to(device)
    if kind == "int":
        return (bits.long() * 3).to(device)
    raise ValueError(kind)


def make(num, shape=SHAPE, dtype=torch.float32, wdtype=torch.float64, mask="bool", seed=0, device=DEVICE):
    """Random non-zero terms (per-term scale and offset), weights like a softmax (or None), mask, grad."""
    gen = torch.Generator().manual_seed(seed + 100 * num)
    terms = [
        (
            torch.randn(shape, generator=gen) * (0.5 + torch.rand((), generator=gen))
            + torch.randn((), generator=gen)
        ).to(device=device, dtype=dtype)
        for _ in range(num)
    ]
    weights = None
    if wdtype is not None:
        weights = torch.softmax(torch.randn(num, generator=gen), 0).to(device=device, dtype=wdtype)
    m = make_mask(mask, num, gen, device)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    return terms, weights, m, grad


def truth(terms, weights, mask):
    """Independent float64 formula on the CPU: sum over active t of w_t * y_t."""
    out = torch.zeros(terms[0].shape, dtype=torch.float64)
    for t, y in enumerate(terms):
        if mask is not None and not bool(mask[t].cpu() != 0):
            continue
        w = 1.0 if weights is None else float(weights[t])
        out += w * y.detach().double().cpu()
    return out


def run(fn, terms, weights, mask, grad, grad_terms=True, grad_w=True):
    """Forward and backward of ``fn`` on fresh leaves; returns the output, term grads and weights grad."""
    leaves = fresh_leaves(*terms, requires_grad=grad_terms)
    (w,) = fresh_leaves(weights, requires_grad=grad_w)
    out = fn(leaves, w, mask)
    inputs = [y for y in leaves if y.requires_grad] + ([w] if w is not None and w.requires_grad else [])
    grads = list(torch.autograd.grad(out, inputs, grad)) if inputs else []
    g_terms = grads[: len(leaves)] if grad_terms else []
    g_w = grads[-1] if w is not None and w.requires_grad else None
    return out.detach(), g_terms, g_w


def check_against_reference(terms, weights, mask, grad, tol, grad_terms=True, grad_w=True):
    out, g_terms, g_w = run(masked_aggregate, terms, weights, mask, grad, grad_terms, grad_w)
    r_out, r_terms, r_w = run(masked_aggregate_reference, terms, weights, mask, grad, grad_terms, grad_w)
    assert out.dtype == terms[0].dtype and out.shape == terms[0].shape
    close(out, r_out, **tol)
    assert len(g_terms) == len(r_terms)
    for t, (a, b) in enumerate(zip(g_terms, r_terms)):
        assert a.dtype == b.dtype and a.shape == b.shape, t
    close_all(g_terms, r_terms, [f"grad of term {t}" for t in range(len(r_terms))], **tol)
    if r_w is None:
        assert g_w is None
    else:
        assert g_w.dtype == weights.dtype and g_w.shape == weights.shape
        close(g_w, r_w, **(GRAD_W if tol is F32 else BF16), msg="grad of weights")
    return out, g_terms, g_w


# --------------------------------------------------------------------------------------------------
# Reference path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["none", "on", "off", "bool", "float", "int"])
@pytest.mark.parametrize("wdtype", [None, torch.float64])
@pytest.mark.parametrize("num", [1, 3])
def test_reference_matches_float64_formula(num, wdtype, mask):
    terms, weights, m, _ = make(num, wdtype=wdtype, mask=mask, device="cpu")
    out = masked_aggregate_reference(terms, weights, m)
    assert out.dtype == torch.float32 and out.shape == SHAPE
    close(out, truth(terms, weights, m), rtol=1e-6, atol=1e-6)
    if mask == "off":
        assert torch.equal(out, torch.zeros_like(out))


def test_reference_single_plain_term_is_a_copy():
    (y,), _, _, _ = make(1, wdtype=None, mask="none", device="cpu")
    out = masked_aggregate_reference([y])
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()


def test_reference_ignores_inactive_terms_even_nan():
    terms, weights, m, grad = make(3, device="cpu")  # mask [1, ?, 0]
    terms[2] = torch.full_like(terms[2], float("nan"))
    out, g_terms, g_w = run(masked_aggregate_reference, terms, weights, m, grad)
    assert torch.isfinite(out).all() and torch.isfinite(g_w).all()
    assert torch.equal(g_terms[2], torch.zeros_like(grad)) and g_w[2] == 0


@pytest.mark.parametrize("mask", ["none", "bool", "float"])
@pytest.mark.parametrize("weighted", [True, False])
def test_reference_gradcheck_float64(weighted, mask):
    terms, weights, m, _ = make(3, shape=(2, 3), dtype=torch.float64, mask=mask, device="cpu")
    leaves = [y.requires_grad_(True) for y in terms]
    if weighted:
        leaves.append(weights.requires_grad_(True))

    def fn(*args):
        if weighted:
            return masked_aggregate_reference(list(args[:-1]), args[-1], m)
        return masked_aggregate_reference(list(args), None, m)

    assert torch.autograd.gradcheck(fn, leaves)


def test_argument_errors():
    terms, weights, m, _ = make(3, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        masked_aggregate([])
    with pytest.raises(TypeError, match="list or tuple"):
        masked_aggregate(torch.stack(terms))
    with pytest.raises(TypeError, match=r"terms\[1\] is a float"):
        masked_aggregate([terms[0], 1.0])
    with pytest.raises(ValueError, match="one shape"):
        masked_aggregate([terms[0], terms[1][:1]])
    with pytest.raises(TypeError, match="one dtype"):
        masked_aggregate([terms[0], terms[1].double()])
    with pytest.raises(TypeError, match="float32, float64"):
        masked_aggregate([terms[0].long()])
    with pytest.raises(ValueError, match=r"`weights` must be a 1-D tensor with one entry per term \(T = 3\)"):
        masked_aggregate(terms, weights[:2])
    with pytest.raises(ValueError, match="`mask` must be a 1-D"):
        masked_aggregate(terms, weights, m[None])
    with pytest.raises(TypeError, match="floating"):
        masked_aggregate(terms, torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match="`mask` must be bool"):
        masked_aggregate(terms, weights, m.to(torch.complex64))
    with pytest.raises(TypeError, match="`mask` must be a tensor"):
        masked_aggregate(terms, weights, [True, False, True])


def test_torch_math_of_the_operator_float64():
    """float64 is not a kernel dtype: the operators compute with PyTorch ops (their fallback), through the
    backward operator; they must agree with autograd through the reference."""
    for mask in ("bool", "off"):
        terms, weights, m, grad = make(11, dtype=torch.float64, mask=mask, device="cpu")
        got = run(lambda *a: torch.ops.fastnas.masked_aggregate(*a), terms, weights, m, grad)
        ref = run(masked_aggregate_reference, terms, weights, m, grad)
        close_all((got[0], *got[1], got[2]), (ref[0], *ref[1], ref[2]), exact=True, **F64)


# --------------------------------------------------------------------------------------------------
# Kernel path against the reference
# --------------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("wdtype", [None, torch.float64])
@pytest.mark.parametrize("mask", ["none", "on", "off", "bool", "float"])
@pytest.mark.parametrize("num", [1, 3, 8, 11])
def test_kernel_matches_reference_fp32(num, mask, wdtype):
    terms, weights, m, grad = make(num, mask=mask, wdtype=wdtype, seed=7)
    out, g_terms, g_w = check_against_reference(terms, weights, m, grad, F32)
    close(out, truth(terms, weights, m), **F32)
    if mask == "off":
        assert torch.equal(out, torch.zeros_like(out))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in g_terms)
        assert g_w is None or torch.equal(g_w, torch.zeros_like(g_w))


@needs_kernels
@pytest.mark.parametrize(
    "num,mask,wdtype",
    [
        (3, "bool", torch.float32),  # fp32 architecture weights, bf16 activations (as under autocast)
        (3, "none", None),
        (11, "float", torch.float32),  # two launches: fp32 partial sums between them
        (8, "off", torch.bfloat16),
    ],
)
def test_kernel_matches_reference_bf16(num, mask, wdtype):
    terms, weights, m, grad = make(num, dtype=torch.bfloat16, wdtype=wdtype, mask=mask, seed=3)
    out, _, _ = check_against_reference(terms, weights, m, grad, BF16)
    close(out, truth(terms, weights, m), **BF16_VS_FLOAT64)


@needs_kernels
def test_kernel_integer_mask_is_binary():
    """mask = 3 selects a term without scaling it (non-zero = active)."""
    terms, weights, m, grad = make(3, mask="int", seed=5)
    assert int(m.max()) == 3
    out, _, _ = check_against_reference(terms, weights, m, grad, F32)
    close(out, truth(terms, weights, (m != 0).float()), **F32)


@needs_kernels
@pytest.mark.parametrize("num", [3, 11])
def test_kernel_never_reads_inactive_terms(num):
    """Inactive terms filled with NaN change nothing: not the output, not the gradients (exact zeros)."""
    terms, weights, m, grad = make(num, mask="bool", seed=11)
    inactive = [t for t in range(num) if not bool(m[t])]
    clean = [y.clone() for y in terms]
    for t in inactive:
        terms[t] = torch.full_like(terms[t], float("nan"))
        clean[t] = torch.zeros_like(clean[t])
    out, g_terms, g_w = run(masked_aggregate, terms, weights, m, grad)
    r_out, r_terms, r_w = run(masked_aggregate_reference, clean, weights, m, grad)
    close(out, r_out, **F32)
    close(g_w, r_w, **GRAD_W)
    close_all(g_terms, r_terms, **F32)
    for t in inactive:
        assert torch.equal(g_terms[t], torch.zeros_like(grad)) and g_w[t] == 0


@needs_kernels
@pytest.mark.parametrize("grad_terms,grad_w", [(False, True), (True, False)])
def test_kernel_partial_requires_grad(grad_terms, grad_w):
    """Only the weights (terms saved, no grad y written) or only the terms (terms not saved)."""
    terms, weights, m, grad = make(3, mask="bool", seed=13)
    check_against_reference(terms, weights, m, grad, F32, grad_terms=grad_terms, grad_w=grad_w)


@needs_kernels
def test_kernel_plain_sum_backward_is_grad_out_itself(monkeypatch):
    """No weights, no mask: every term's gradient is the incoming gradient, with no kernel and no copy."""
    calls = count_launches(monkeypatch, ma, "backward")
    terms, _, _, grad = make(3, wdtype=None, mask="none", seed=17)
    leaves = fresh_leaves(*terms)
    out = masked_aggregate(leaves)
    close(out, truth(terms, None, None), **F32)
    grads = torch.autograd.grad(out, leaves, grad)
    assert calls == {"backward": 0}
    assert all(g.data_ptr() == grad.data_ptr() for g in grads)


@needs_kernels
def test_kernel_layouts():
    """Shared channels-last layout: used as is, output channels-last; mixed layouts and an expanded
    (stride-0) incoming gradient are made dense; weights and mask may be strided views."""
    cl = torch.channels_last
    terms, weights, m, grad = make(3, mask="bool", seed=19)
    m = torch.tensor([True, True, False], device=DEVICE)
    # [T, 2] with column 0 a strided view; column 1 differs, so reading it with stride 1 fails the test.
    alpha = torch.stack([weights, -weights.flip(0)], dim=1)
    masks = torch.stack([m, ~m], dim=1)
    w_col, m_col = alpha[:, 0], masks[:, 0]
    assert w_col.stride(0) == 2 and m_col.stride(0) == 2
    terms_cl = [y.contiguous(memory_format=cl) for y in terms]
    out, _, _ = check_against_reference(terms_cl, weights, m_col, grad.contiguous(memory_format=cl), F32)
    assert out.is_contiguous(memory_format=cl)
    results = []
    for fn in (masked_aggregate, masked_aggregate_reference):
        leaf, *leaves = fresh_leaves(alpha, *terms_cl)
        out = fn(leaves, leaf[:, 0], m_col)
        results.append((out.detach(), *torch.autograd.grad(out, [leaf, *leaves], grad)))
    close_all(*results, **GRAD_W)
    mixed = [terms_cl[0], terms[1], terms[2].transpose(1, 3).contiguous().transpose(1, 3)]
    check_against_reference(mixed, weights, m, grad, F32)
    g_expanded = torch.randn(1, 3, 1, 1, device=DEVICE).expand(SHAPE)
    check_against_reference(terms, weights, m, g_expanded, F32)
    check_against_reference(terms_cl, None, m, g_expanded, F32)


@needs_kernels
def test_kernel_empty_terms():
    terms = [torch.randn(2, 0, 3, device=DEVICE) for _ in range(3)]
    out = masked_aggregate(
        terms, torch.ones(3, device=DEVICE), torch.ones(3, dtype=torch.bool, device=DEVICE)
    )
    assert out.shape == (2, 0, 3)


poisoned = poisoned_fixture(ma)  # every buffer the launchers allocate starts as NaN


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["bool", "off", "none"])
def test_kernel_poisoned_buffers_small_blocks(poisoned, monkeypatch, dtype, mask):
    """Blocks of 64 over 210 elements (4 programs, the last partial), T = 11 (two launches, the bf16 fp32
    partial-sum buffer), with NaN-poisoned outputs, gradients and partial sums."""
    monkeypatch.setattr(ma, "_BLOCK", 64)
    terms, weights, m, grad = make(11, dtype=dtype, wdtype=torch.float32, mask=mask, seed=23)
    check_against_reference(terms, weights, m, grad, F32 if dtype == torch.float32 else BF16)


@needs_kernels
def test_kernel_bf16_rounds_once_across_launches():
    """T = 11 in bf16: the first launch's partial sum stays fp32 for the second. Terms 256 and -256 in
    different launches cancel; a bf16 partial sum (spacing 2 at 256) would lose the small terms."""
    gen = torch.Generator().manual_seed(41)
    small = [torch.randn(SHAPE, generator=gen) * 0.1 for _ in range(9)]
    terms = [torch.full(SHAPE, 256.0), *small[:7], torch.full(SHAPE, -256.0), *small[7:]]
    terms = [y.to(device=DEVICE, dtype=torch.bfloat16) for y in terms]
    out = masked_aggregate(terms)
    expected = truth(terms, None, None)
    assert float(expected.abs().max()) < 2.0
    close(out, expected, **BF16)


# --------------------------------------------------------------------------------------------------
# Dispatch, reference switch, torch.compile, opcheck
# --------------------------------------------------------------------------------------------------


@needs_kernels
def test_reference_switch_skips_the_kernels(monkeypatch):
    terms, weights, m, grad = make(3, seed=29)
    forced, fused = check_reference_switch(
        monkeypatch, ma, lambda: run(masked_aggregate, terms, weights, m, grad)
    )
    close_all((forced[0], *forced[1]), (fused[0], *fused[1]), **F32)
    close(forced[2], fused[2], **GRAD_W)


def test_fake_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        terms = [torch.empty(2, 4, 5, 5, dtype=torch.bfloat16) for _ in range(3)]
        terms_cl = [y.contiguous(memory_format=torch.channels_last) for y in terms]
        w, m = torch.empty(3, dtype=torch.float64), torch.empty(3, dtype=torch.bool)
        out = torch.ops.fastnas.masked_aggregate(terms_cl, w, m)
        assert out.shape == (2, 4, 5, 5) and out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last)
        g_terms, g_w = torch.ops.fastnas.masked_aggregate_backward(out, terms, w, m, 3, True)
        assert len(g_terms) == 3 and g_terms[0].shape == out.shape and g_terms[0].dtype == torch.bfloat16
        assert g_w.shape == (3,) and g_w.dtype == torch.float64
        g_terms, g_w = torch.ops.fastnas.masked_aggregate_backward(out, [], None, m, 3, True)
        assert len(g_terms) == 3 and g_w.numel() == 0


@needs_kernels
def test_torch_compile_fullgraph_new_mask_values_no_recompile(monkeypatch):
    """The compiled graph runs the Triton operator; mask and weights are graph inputs, so changing their
    values in place gives the new sum without recompiling (and without host synchronisation)."""
    calls = count_launches(monkeypatch, ma, "forward")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def node(terms, weights, mask):
        return masked_aggregate(terms, weights, mask) * 2.0

    terms, weights, m, grad = make(3, mask="bool", seed=31)
    m.copy_(torch.tensor([True, False, True]))
    compiled, got, ref = compile_and_reference(
        node, lambda fn: run(fn, terms, weights, m, grad), calls, backend=backend
    )
    assert len(graphs) == 1
    assert any("masked_aggregate" in str(n.target) for n in graphs[0].graph.nodes)
    close_all((got[0], *got[1]), (ref[0], *ref[1]), **F32)
    close(got[2], ref[2], **GRAD_W)
    m.copy_(torch.tensor([False, True, False]))
    weights.mul_(3.0)
    out = run(compiled, terms, weights, m, grad)[0]
    close(out, 2.0 * truth(terms, weights, m), **F32)
    assert len(graphs) == 1, "changing mask or weight values recompiled the graph"


@needs_kernels
def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the operator
    on the kernel path (tiny shapes; each check runs the interpreted kernels a few times)."""
    terms, weights, m, _ = make(3, shape=(2, 3, 2), wdtype=torch.float32, seed=37)
    terms = [y.requires_grad_(True) for y in terms]
    op = torch.ops.fastnas.masked_aggregate.default
    torch.library.opcheck(op, (terms, weights.requires_grad_(True), m))
    torch.library.opcheck(op, (terms, None, m.float()))
    torch.library.opcheck(op, (terms, None, None))
