"""The fast cell executor and the BN-folded mixed edge against the reference loop.

Two runs of the same model from the same state must agree: outputs, the gradients of every weight and of
the architecture weights, and the BN running statistics. With ``force_reference()`` the fast executor runs
its batched math with PyTorch ops; without it (tests/conftest.py sets TRITON_INTERPRET=1 on CPU) every
kernel runs in the Triton interpreter.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from fastnas.backend import force_reference
from fastnas.kernels._common import kernels_in_cpu_models, triton_supports
from fastnas.nn import MixedEdge, PartialChannels, Supernet
from fastnas.nn.fast_executor import FastExecutor, outgoing_edges
from fastnas.spaces import DartsSpace

_KERNELS_RUN = triton_supports(torch.device("cpu"), torch.float32) or torch.cuda.is_available()
needs_kernels = pytest.mark.skipif(
    not _KERNELS_RUN, reason="Triton kernels cannot run here (no GPU and TRITON_INTERPRET is not 1)"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _edge_weights(model: Supernet, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    num_edges, num_ops = len(model.space.edges), len(model.space.ops)
    types = sorted(set(model.cell_types))
    dtype = next(model.parameters()).dtype  # float64 models get float64 weights
    return {
        t: torch.softmax(torch.randn(num_edges, num_ops, generator=gen), -1)
        .to(DEVICE, dtype)
        .requires_grad_(True)
        for t in types
    }


def _step(model: Supernet, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    """Forward and backward; returns logits, arch-weight grads, parameter grads and BN buffers."""
    weights = _edge_weights(model, seed)
    logits = model(x, weights)
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    arch = {t: w.grad.detach().clone() for t, w in weights.items()}
    params = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if "running" in n}
    return logits.detach(), arch, params, buffers


def _pair(
    layers: int = 3,
    C: int = 4,
    seed: int = 0,
    space: DartsSpace | None = None,
    partial: PartialChannels | None = None,
) -> tuple[Supernet, Supernet]:
    torch.manual_seed(seed)
    reference = Supernet(space or DartsSpace(), C=C, layers=layers, num_classes=5, partial=partial).to(DEVICE)
    fast = copy.deepcopy(reference)
    fast.set_executor("fast")
    return reference, fast


def _data(n: int = 4, size: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 5, (n,), generator=gen)
    return images.to(DEVICE), labels.to(DEVICE)


def _assert_same(got, want, rtol: float, atol: float) -> None:
    logits, arch, params, buffers = got
    ref_logits, ref_arch, ref_params, ref_buffers = want
    torch.testing.assert_close(logits.float(), ref_logits.float(), rtol=rtol, atol=atol)
    for t in ref_arch:
        torch.testing.assert_close(arch[t], ref_arch[t], rtol=rtol, atol=atol, msg=f"alpha grad of {t}")
    assert params.keys() == ref_params.keys()
    for name in ref_params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=rtol, atol=atol, msg=name)
    assert buffers.keys() == ref_buffers.keys()
    for name in ref_buffers:
        torch.testing.assert_close(buffers[name], ref_buffers[name], rtol=rtol, atol=atol, msg=name)


def test_outgoing_edges_cover_the_darts_cell() -> None:
    space = DartsSpace()
    leaving = outgoing_edges(space.num_nodes)
    seen = sorted(e for group in leaving for e, _ in group)
    assert seen == list(range(len(space.edges)))
    for source, group in enumerate(leaving):
        for e, node in group:
            assert space.edges[e].source == source and space.edges[e].node == node
    assert [len(g) for g in leaving] == [4, 4, 3, 2, 1]


def test_fast_executor_matches_reference_with_pytorch_ops() -> None:
    """Batched edges, BN from pointwise sums, folded BNs and the node sum, all as PyTorch ops."""
    reference, fast = _pair(layers=4)
    x, y = _data()
    with force_reference():
        want = _step(reference, x, y)
        got = _step(fast, x, y)
    _assert_same(got, want, rtol=1e-4, atol=1e-5)


def test_fast_executor_two_steps_track_running_stats() -> None:
    """Running statistics after two training steps match (momentum and counters as nn.BatchNorm2d)."""
    reference, fast = _pair()
    x, y = _data()
    with force_reference():
        for seed in (0, 1):
            want = _step(reference, x, y, seed)
            got = _step(fast, x, y, seed)
    _assert_same(got, want, rtol=1e-4, atol=1e-5)
    counters = {n: b for n, b in fast.named_buffers() if n.endswith("num_batches_tracked")}
    ref_counters = dict(reference.named_buffers())
    assert counters and all(torch.equal(b, ref_counters[n]) for n, b in counters.items())


@pytest.mark.slow  # ~25 s: a few hundred interpreted kernel launches
@needs_kernels
def test_fast_executor_matches_reference_with_kernels() -> None:
    """A reduction cell (every path: stride-2 edges from the inputs with FactorizedReduce, stride-1 edges
    between nodes with the identity; all 8 DARTS ops, the batched conv families, pools, edge-group sums,
    node sums) with every Triton kernel against the reference loop: output, the gradients of both inputs,
    the edge weights and every parameter, and the running statistics. On CPU (the Triton interpreter) two
    intermediate nodes and 4x4 inputs; the four-node cell runs the same code in the PyTorch-ops tests."""
    index = 1  # cells of a 3-layer supernet: normal, reduction, reduction
    space = DartsSpace() if torch.cuda.is_available() else DartsSpace(num_nodes=2, multiplier=2)
    reference, fast = _pair(layers=3, C=4, space=space)
    gen = torch.Generator().manual_seed(3)
    cells = (reference.cells[index], fast.cells[index])
    assert cells[0].reduction
    s0 = torch.randn(2, _in_channels(cells[0].preprocess0), 4, 4, generator=gen).to(DEVICE)
    s1 = torch.randn(2, _in_channels(cells[0].preprocess1), 4, 4, generator=gen).to(DEVICE)
    w = torch.softmax(torch.randn(len(space.edges), len(space.ops), generator=gen), -1).to(DEVICE)
    results = []
    for cell, kernels in zip(cells, (False, True), strict=True):
        inputs = [t.clone().requires_grad_(True) for t in (s0, s1, w)]
        with contextlib.ExitStack() as stack:
            stack.enter_context(kernels_in_cpu_models() if kernels else force_reference())
            out = cell(*inputs)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out)
        (out * g).sum().backward()
        grads = [t.grad for t in inputs] + [p.grad for p in cell.parameters() if p.grad is not None]
        stats = [b.clone() for n, b in cell.named_buffers() if "running" in n]
        results.append((out.detach(), grads, stats))
    (want, want_grads, want_stats), (got, got_grads, got_stats) = results
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)
    assert len(got_grads) == len(want_grads) and len(got_stats) == len(want_stats) > 0
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)
    for a, b in zip(got_stats, want_stats, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


def _in_channels(preprocess: torch.nn.Module) -> int:
    """The channels a cell's preprocessing takes (its first convolution's input)."""
    return next(m for m in preprocess.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


@pytest.mark.parametrize(("k", "bypass"), [(2, "max"), (4, "avg")])
def test_fast_executor_runs_partial_channel_edges_batched(k: int, bypass: str) -> None:
    """PC-DARTS edges (1/K of the channels through the ops, the rest bypassing) on the batched path:
    same logits, gradients and BN statistics as the reference loop, PyTorch ops and Triton kernels."""
    partial = PartialChannels(k, bypass)
    reference, fast = _pair(C=8, partial=partial)
    x, y = _data(n=2)
    with force_reference():  # float64: the two paths agree to rounding (float32 amplifies it at ReLU kinks)
        want = _step(reference.double(), x.double(), y)
        _assert_same(_step(fast.double(), x.double(), y), want, rtol=1e-9, atol=1e-11)
    if k != 4:
        return  # the kernel path below is slow in the Triton interpreter: once is enough
    space = DartsSpace(num_nodes=1, multiplier=1)  # the interpreter: one node (2 edges), one image
    reference, fast = _pair(C=8, space=space, partial=partial)
    x, y = _data(n=1)
    with force_reference():
        want = _step(reference, x, y)
    with kernels_in_cpu_models():
        got = _step(fast, x, y)
    _assert_same(got, want, rtol=2e-3, atol=2e-4)


def test_fast_executor_bf16_autocast_close_to_reference() -> None:
    reference, fast = _pair()
    x, y = _data()
    with force_reference(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        want = _step(reference, x, y)
        got = _step(fast, x, y)
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=0.1, atol=0.1)
    for t in want[1]:
        cos = torch.nn.functional.cosine_similarity(got[1][t].flatten(), want[1][t].flatten(), dim=0)
        assert cos > 0.95, f"alpha gradients of {t} point elsewhere under bf16 (cosine {cos:.3f})"


def test_eval_mode_uses_running_statistics_like_the_reference() -> None:
    reference, fast = _pair()
    x, y = _data()
    with force_reference():
        _step(reference, x, y)
        _step(fast, x, y)
        reference.eval()
        fast.eval()
        weights = _edge_weights(reference, 3)
        with torch.no_grad():
            torch.testing.assert_close(fast(x, weights), reference(x, weights), rtol=1e-4, atol=1e-5)


def test_cells_with_unfoldable_ops_fall_back_to_the_reference_loop() -> None:
    """An op without an affine-free final BN (here: BN made affine) keeps the reference loop."""
    _, fast = _pair()
    bn = fast.cells[0].edges[0].ops[4][1][3]
    bn.affine = True  # a foldable-BN check must now refuse the cell
    x, _ = _data()
    executor = FastExecutor()
    calls = []
    original = executor._reference.__call__

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return original(*args)

    executor._reference = Spy()  # type: ignore[assignment]
    fast.cells[0].executor = executor
    with force_reference():
        fast(x, _edge_weights(fast, 0))
    assert calls == [1]


def _edge_pair(stride: int) -> tuple[MixedEdge, MixedEdge]:
    torch.manual_seed(stride)
    edge = MixedEdge(4, stride, DartsSpace().ops).to(DEVICE)
    return edge, copy.deepcopy(edge)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernels", [False, pytest.param(True, marks=needs_kernels)])
def test_mixed_edge_folded_matches_reference(stride: int, kernels: bool) -> None:
    reference, folded = _edge_pair(stride)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 6, generator=gen).to(DEVICE)
    w = torch.softmax(torch.randn(8, generator=gen), 0).to(DEVICE)
    g = torch.randn(2, 4, 6 // stride, 6 // stride, generator=gen).to(DEVICE)
    results = []
    for edge, fused in ((reference, False), (folded, True)):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        with force_reference(not kernels), kernels_in_cpu_models(kernels):
            out = edge.forward_folded(xs, ws) if fused else edge.forward_reference(xs, ws)
        out.backward(g)
        grads = [p.grad.clone() for p in edge.parameters()]
        stats = [b.clone() for n, b in edge.named_buffers() if "running" in n]
        results.append((out.detach(), xs.grad, ws.grad, grads, stats))
    (out, gx, gw, gp, st), (rout, rgx, rgw, rgp, rst) = results[1], results[0]
    tol = {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(out, rout, **tol)
    torch.testing.assert_close(gx, rgx, **tol)
    torch.testing.assert_close(gw, rgw, **tol)
    for a, b in zip(gp, rgp, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(st, rst, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert gw[0] == 0, "the `none` op must get exactly zero architecture gradient"


def test_mixed_edge_takes_the_folded_path_only_where_kernels_run(monkeypatch) -> None:
    edge, _ = _edge_pair(1)
    calls = []
    monkeypatch.setattr(edge, "forward_folded", lambda x, w: calls.append(1) or edge.forward_reference(x, w))
    x, w = torch.randn(2, 4, 6, 6).to(DEVICE), torch.softmax(torch.randn(8), 0).to(DEVICE)
    with force_reference():
        edge(x, w)
    assert calls == []
    edge.eval()
    with force_reference(False):
        edge(x, w)
    assert calls == [], "evaluation mode uses running statistics: no folding"
    edge.train()
    with force_reference(False):
        edge(x, w)
    assert calls == ([1] if torch.cuda.is_available() else []), "CPU models keep the reference by default"
    with force_reference(False), kernels_in_cpu_models():
        edge(x, w)
    assert len(calls) == (2 if torch.cuda.is_available() else 1 if _KERNELS_RUN else 0)


@pytest.mark.parametrize("order", [1, 2])
def test_search_with_the_fast_executor_follows_the_reference_run(tmp_path, order: int) -> None:
    """The whole bilevel search (first and second order) gives the same architecture trajectory."""
    from fastnas import SearchConfig, run_search

    def search(executor: str):
        config = SearchConfig(
            dataset="digits",
            limit=64,
            batch_size=16,
            C=4,
            layers=3,
            epochs=3 - order,
            seed=3,
            device="cpu",
            out_dir=str(tmp_path),
            run_name=f"{executor}-{order}",
            supernet_options={"executor": executor},
            method_options={"order": order},
        )
        with force_reference():
            result = run_search(config, progress=False)
        return result.model.algorithm.state_dict(), [m["train_loss"] for m in result.metrics]

    ref_alphas, ref_losses = search("reference")
    alphas, losses = search("fast")
    assert (tmp_path / f"fast-{order}" / "config.json").read_text().count('"executor": "fast"') == 1
    torch.testing.assert_close(losses, ref_losses, rtol=1e-3, atol=1e-4)
    for name, value in ref_alphas.items():
        torch.testing.assert_close(alphas[name], value, rtol=1e-3, atol=1e-5, msg=name)


def test_auto_executor_picks_fast_where_kernels_run_and_reference_elsewhere(monkeypatch) -> None:
    """``auto`` (the default) runs the reference loop on a CPU and the fast executor where the kernels run
    (emulated here with ``kernels_in_cpu_models``); every supernet accepts it."""
    from fastnas.nn import fast_executor
    from fastnas.nn.executor import build_executor, check_executor
    from fastnas.nn.supernet_options import SupernetOptions

    assert SupernetOptions().executor == "auto"
    executor = build_executor("auto")
    assert isinstance(executor, fast_executor.AutoExecutor)
    calls: list[str] = []
    monkeypatch.setattr(executor.fast, "_run", lambda *a, **k: calls.append("fast") or [])

    class Recording(type(executor.reference)):  # type: ignore[misc]
        def __call__(self, *args, **kwargs):
            calls.append("reference")
            return []

    executor.reference = Recording()
    model = Supernet(DartsSpace(), C=4, layers=3, num_classes=5)
    cell, x = model.cells[0], torch.randn(2, 4, 8, 8)
    weights = torch.softmax(torch.randn(len(model.space.edges), len(model.space.ops)), -1)
    executor(cell, x, x, weights)
    if _KERNELS_RUN:
        with kernels_in_cpu_models():
            executor(cell, x, x, weights)
        assert calls == ["reference", "fast"]
    else:
        assert calls == ["reference"]
    for supported in (("reference",), None):
        check_executor("auto", supported, "any")  # accepted by every supernet
