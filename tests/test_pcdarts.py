"""PC-DARTS (REFERENCE.md section 5): partial channel connections, the channel shuffle,
edge normalisation, its derivation, the delayed architecture updates, short searches, defaults, bad input
and the parameter saving of the partial edges."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, require_shared, tiny_search

from fastnas import DARTS_OPS, DartsSpace, SearchConfig, SearchModel, run_search
from fastnas.algorithms import DARTS, PCDARTS, PCDARTSOptions, derive_darts_cell
from fastnas.algorithms.edge_norm import edge_weights
from fastnas.cli import main
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.nn import MixedEdge, PartialChannels
from fastnas.nn.mixed import channel_shuffle
from fastnas.spaces import NB201Space
from fastnas.train.search import SearchRunner

SPACE = DartsSpace()
OPS = tuple(SPACE.ops)
NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)  # the DARTS column order
assert OPS == DARTS_OPS  # the column order the names above assume (tests/test_ops.py checks it)
# the incoming edges of each intermediate node of a DARTS cell (node j: j + 2 edges, from states 0..j+1)
DARTS_NODE_EDGES = [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]
# NAS-Bench-201: edges 0 (0->1), 1 (0->2), 2 (1->2), 3 (0->3), 4 (1->3), 5 (2->3)
NB201_NODE_EDGES = [[0], [1, 2], [3, 4, 5]]
TABLE = SHARED_DATA / "nb201.csv"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


def softmax_list(values: list[float]) -> list[float]:
    """A softmax in Python floats (independent of torch)."""
    exps = [math.exp(v) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def hand_edge_weights(betas: list[float], groups: list[list[int]]) -> list[float]:
    """Per edge: the softmax of the betas over the edges into the same node."""
    out = [0.0] * len(betas)
    for group in groups:
        for e, w in zip(group, softmax_list([betas[e] for e in group]), strict=True):
            out[e] = w
    return out


def hand_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle by explicit indexing: output channel ``i * groups + g`` is input channel
    ``g * (C / groups) + i``."""
    c = x.shape[1]
    per_group = c // groups
    order = [(p % groups) * per_group + p // groups for p in range(c)]
    return x[:, order]


def hand_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A 2x2, stride-2 pool whose last window may hang over an odd edge (ceil mode): max or mean of the
    elements inside the input, by padding to an even size and reshaping."""
    n, c, h, w = x.shape
    ph, pw = h % 2, w % 2
    if kind == "max":
        padded = F.pad(x, (0, pw, 0, ph), value=-math.inf)
        return padded.view(n, c, (h + ph) // 2, 2, (w + pw) // 2, 2).amax(dim=(3, 5))
    sums = F.pad(x, (0, pw, 0, ph)).view(n, c, (h + ph) // 2, 2, (w + pw) // 2, 2).sum(dim=(3, 5))
    ones = F.pad(torch.ones(1, 1, h, w, dtype=x.dtype), (0, pw, 0, ph))
    counts = ones.view(1, 1, (h + ph) // 2, 2, (w + pw) // 2, 2).sum(dim=(3, 5))
    return sums / counts


def random_row(seed: int, size: int, edge_weight: float) -> torch.Tensor:
    """A softmax row times an edge weight (as PC-DARTS' edge normalisation gives it): sums to that."""
    g = torch.Generator().manual_seed(seed)
    return (torch.softmax(torch.randn(size, generator=g), 0) * edge_weight).requires_grad_(True)


# ------------------------------------------------------------------------------------ channel shuffle


def test_channel_shuffle_against_a_hand_built_example() -> None:
    x = torch.randn(2, 8, 3, 5)
    # 4 groups of 2 channels [0 1] [2 3] [4 5] [6 7]: first channel of every group, then the second ones
    assert torch.equal(channel_shuffle(x, 4), x[:, [0, 2, 4, 6, 1, 3, 5, 7]])
    # 2 groups of 4 channels [0 1 2 3] [4 5 6 7]: interleaved
    assert torch.equal(channel_shuffle(x, 2), x[:, [0, 4, 1, 5, 2, 6, 3, 7]])
    assert torch.equal(channel_shuffle(x, 1), x) and torch.equal(channel_shuffle(x, 8), x)
    y = torch.randn(1, 12, 2, 2)
    assert torch.equal(channel_shuffle(y, 3), y[:, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]])
    assert torch.equal(channel_shuffle(y, 4), hand_shuffle(y, 4))


def test_a_partial_edge_places_the_mixed_channels_first_in_every_shuffle_group() -> None:
    """k = 4 on 8 channels with one skip op: mixed m0 m1 = x0 x1 (times the skip weight), bypass b0..b5 =
    x2..x7 (times the row sum); concatenated [m0 m1 b0 .. b5], shuffled [m0 b0 b2 b4 m1 b1 b3 b5]."""
    edge = MixedEdge(8, 1, ("none", "skip_connect"), partial=PartialChannels(4))
    x = torch.randn(2, 8, 4, 4)
    out = edge(x, torch.tensor([0.7, 0.2]))
    scale = torch.tensor([0.2, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9]).view(1, 8, 1, 1)
    torch.testing.assert_close(out, x[:, [0, 2, 4, 6, 1, 3, 5, 7]] * scale)
    # forward_op: the one op on the first quarter, the bypass unscaled
    torch.testing.assert_close(edge.forward_op(x, 1), x[:, [0, 2, 4, 6, 1, 3, 5, 7]])
    torch.testing.assert_close(edge.forward_op(x, 0), x[:, [0, 2, 4, 6, 1, 3, 5, 7]] * (scale != 0.2))


# ------------------------------------------------------------------------------------- partial edges


@pytest.mark.parametrize("stride", [1, 2])
def test_a_partial_edge_with_k_1_is_the_darts_edge(stride: int) -> None:
    torch.manual_seed(0)
    darts = MixedEdge(8, stride, OPS)
    partial = MixedEdge(8, stride, OPS, partial=PartialChannels(1))
    partial.load_state_dict(darts.state_dict())
    assert [p.shape for p in partial.parameters()] == [p.shape for p in darts.parameters()]
    x = torch.randn(4, 8, 6, 6)
    results = []
    for edge in (darts, partial):
        xi = x.clone().requires_grad_(True)
        w = random_row(1, len(OPS), 0.6)
        out = edge(xi, w)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, xi.grad, w.grad, [p.grad for p in edge.parameters()]))
    (o1, gx1, gw1, gp1), (o2, gx2, gw2, gp2) = results
    assert o1.shape == (4, 8, 6 // stride, 6 // stride)
    torch.testing.assert_close(o2, o1)
    torch.testing.assert_close(gx2, gx1)
    torch.testing.assert_close(gw2, gw1)
    for a, b in zip(gp2, gp1, strict=True):
        torch.testing.assert_close(a, b)


def test_a_pcdarts_supernet_with_k_1_and_no_edge_norm_is_the_darts_supernet() -> None:
    torch.manual_seed(3)
    darts = SearchModel.build("darts", C=8, layers=3)
    pc = SearchModel.build("pc-darts", C=8, layers=3, partial_k=1, edge_norm=False)
    assert pc.state_dict().keys() == darts.state_dict().keys()  # no betas without edge normalisation
    pc.load_state_dict(darts.state_dict())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    losses = []
    for model in (darts, pc):
        loss = model.loss(x, y, level="arch")
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0])
    grads = {n: p.grad for n, p in darts.named_parameters()}
    for name, p in pc.named_parameters():
        assert p.grad is not None and grads[name] is not None, name
        torch.testing.assert_close(p.grad, grads[name], msg=name)


def hand_partial_edge(
    edge: MixedEdge, x: torch.Tensor, w: torch.Tensor, k: int, stride: int, ops: tuple[str, ...], bypass: str
) -> torch.Tensor:
    """The PC-DARTS edge by hand: a plain edge on C/k channels (the partial edge's op weights), applied
    to the first C/k channels; the rest pooled on stride 2, times the row sum; concatenated, shuffled."""
    c = x.shape[1]
    plain = MixedEdge(c // k, stride, ops)
    plain.load_state_dict(edge.state_dict())
    mixed = plain(x[:, : c // k], w)
    rest = x[:, c // k :]
    if stride == 2:
        rest = hand_pool(rest, bypass)
    rest = rest * w.sum()
    return hand_shuffle(torch.cat([mixed, rest.to(mixed.dtype)], 1), k)


OPS_WITHOUT_FR = tuple(op for op in OPS if op != "skip_connect")  # FactorizedReduce needs an even size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("stride", "size", "ops", "bypass"),
    [
        (1, 7, OPS, "max"),
        (2, 8, OPS, "max"),
        (2, 8, OPS, "avg"),
        (2, 7, OPS_WITHOUT_FR, "max"),
        (2, 7, OPS_WITHOUT_FR, "avg"),
    ],
    ids=["s1", "s2-max", "s2-avg", "s2-odd-max", "s2-odd-avg"],
)
def test_a_partial_edge_with_k_4_equals_the_hand_computation(
    stride: int, size: int, ops: tuple[str, ...], bypass: str, dtype: torch.dtype
) -> None:
    k, c = 4, 16
    torch.manual_seed(5)
    edge = MixedEdge(c, stride, ops, partial=PartialChannels(k, bypass))
    assert edge.partial == PartialChannels(k, bypass)
    convs = [m for m in edge.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.in_channels == c // k for m in convs)  # the ops see C/k channels
    x = torch.randn(4, c, size, size)
    probe = torch.randn(4, c, math.ceil(size / stride), math.ceil(size / stride))
    results = []
    for compute in ("module", "hand"):
        xi = x.clone().requires_grad_(True)
        w = random_row(2, len(ops), 0.37)  # the row sums to an edge weight < 1: the bypass is scaled
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = (
                edge(xi, w) if compute == "module" else hand_partial_edge(edge, xi, w, k, stride, ops, bypass)
            )
        assert out.shape == probe.shape, compute  # odd size with stride 2: ceil(7 / 2) = 4
        (out.float() * probe).sum().backward()
        results.append((out.float(), xi.grad, w.grad))
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, **tol)
    if dtype == torch.bfloat16:  # and not far from fp32
        reference = hand_partial_edge(edge, x, random_row(2, len(ops), 0.37), k, stride, ops, bypass)
        torch.testing.assert_close(results[0][0], reference.detach(), rtol=0.1, atol=0.1)


def test_a_partial_edge_bypass_channels_are_pooled_inputs_times_the_edge_weight() -> None:
    """Read the bypass channels back out of the shuffled output: x[:, C/k:], 2x2 max-pooled, times the
    row sum; the mixed channels hold the op outputs."""
    k, c = 4, 8
    edge = MixedEdge(c, 2, ("none", "max_pool_3x3"), pool_bn=False, partial=PartialChannels(k))
    x = torch.randn(2, c, 5, 5)
    out = edge(x, torch.tensor([0.1, 0.3]))
    unshuffled = out[:, [0, 4, 1, 5, 2, 6, 3, 7]]  # [m0 b0 b2 b4 m1 b1 b3 b5] -> [m0 m1 b0 .. b5]
    torch.testing.assert_close(unshuffled[:, 2:], hand_pool(x[:, 2:], "max") * 0.4)
    torch.testing.assert_close(unshuffled[:, :2], 0.3 * F.max_pool2d(x[:, :2], 3, 2, 1))


def test_the_fast_executor_runs_partial_edges_without_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from fastnas.nn import fast_executor

    monkeypatch.setattr(fast_executor, "_FALLBACKS_SEEN", set())
    torch.manual_seed(0)
    model = SearchModel.build("pc-darts", C=8, layers=3, num_classes=3, executor="fast")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs the reference loop" warning
        fast = model(x)
    model.supernet.set_executor("reference")
    torch.testing.assert_close(fast, model(x))


# ------------------------------------------------------------------------------- edge normalisation


def test_edge_normalisation_weights_are_the_softmax_over_each_nodes_incoming_edges() -> None:
    nodes = [edge.node for edge in SPACE.edges]
    assert [nodes.count(j) for j in range(4)] == [2, 3, 4, 5]  # node j has j + 2 incoming edges
    betas = [0.3, -1.2, 0.5, 0.0, 2.0, -0.7, 1.1, 0.4, -0.2, 0.9, -1.5, 0.6, 0.1, 1.7]
    expected = hand_edge_weights(betas, DARTS_NODE_EDGES)
    got = edge_weights(torch.tensor(betas, dtype=torch.float64), nodes)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    nb_nodes = [edge.node for edge in NB201Space().edges]
    nb_betas = [0.8, -0.4, 1.3, 0.2, -2.0, 0.5]
    got = edge_weights(torch.tensor(nb_betas, dtype=torch.float64), nb_nodes)
    assert got.tolist() == pytest.approx(hand_edge_weights(nb_betas, NB201_NODE_EDGES), rel=1e-12)
    assert float(got[0]) == 1.0  # node 1 has one incoming edge


@pytest.mark.parametrize("space", [SPACE, NB201Space()], ids=["darts", "nb201"])
def test_arch_weights_are_op_softmax_times_edge_weight(space: Any) -> None:
    groups = DARTS_NODE_EDGES if isinstance(space, DartsSpace) else NB201_NODE_EDGES
    alg = PCDARTS(space)
    names = {n for n, _ in alg.named_parameters()}
    assert names == {f"{kind}.{t}" for kind in ("alphas", "edge_norm.betas") for t in space.cell_types}
    assert {id(p) for p in alg.arch_parameters()} == {id(p) for p in alg.parameters()}
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for t in space.cell_types:
            alg.alphas[t].copy_(torch.randn(alg.alphas[t].shape, generator=g))
            alg.edge_norm.betas[t].copy_(torch.randn(alg.edge_norm.betas[t].shape, generator=g))
    with torch.no_grad():
        weights = alg.arch_weights()
    for t in space.cell_types:
        alphas, betas = alg.alphas[t].tolist(), alg.edge_norm.betas[t].tolist()
        edge = hand_edge_weights(betas, groups)
        expected = [[edge[e] * p for p in softmax_list(alphas[e])] for e in range(space.num_edges)]
        assert weights[t].shape == (space.num_edges, space.num_ops)
        for e in range(space.num_edges):
            assert weights[t][e].tolist() == pytest.approx(expected[e], rel=1e-5), (t, e)
        for group in groups:  # every node's incoming edge weights sum to 1
            assert float(weights[t][group].sum()) == pytest.approx(1.0, rel=1e-5)
    # gradients reach the betas through the weights
    sum(w[:, 3].sum() for w in alg.arch_weights().values()).backward()
    assert all(b.grad is not None and float(b.grad.abs().sum()) > 0 for b in alg.edge_norm.betas.values())


def test_without_edge_normalisation_there_are_no_betas_and_rows_are_a_plain_softmax() -> None:
    alg = PCDARTS(SPACE, edge_norm=False)
    assert {n for n, _ in alg.named_parameters()} == {"alphas.normal", "alphas.reduce"}
    assert alg.edge_norm is None
    with torch.no_grad():
        alg.alphas["normal"].copy_(torch.randn(14, 8))
    for t, w in alg.arch_weights().items():
        for e in range(14):
            assert w[e].tolist() == pytest.approx(softmax_list(alg.alphas[t][e].tolist()), rel=1e-5)
    assert PCDARTSOptions().edge_norm and PCDARTSOptions().arch_start_epoch == 15


# -------------------------------------------------------------------------------------- derivation


def derivation_parameters() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Alphas with one hot op per edge (logit a, others 0: op weight e^a / (e^a + 7)); betas that reorder
    the edges of nodes 1 and 3 of the normal cell only."""
    hot = {  # edge: (op, logit)
        0: (SEP5, 2.0),  # node 0
        1: (MAX, 1.0),
        2: (SEP3, 3.0),  # node 1: op weights .742 .514 .280
        3: (DIL3, 2.0),
        4: (SKIP, 1.0),
        5: (AVG, 1.5),  # node 2: .390 .190 .635 .280
        6: (SEP3, 0.5),
        7: (DIL5, 2.5),
        8: (SKIP, 1.0),
        9: (SEP3, 3.0),  # node 3: .742 .635 .191 .241 .322
        10: (SEP5, 2.5),
        11: (MAX, 0.5),
        12: (DIL3, 0.8),
        13: (SKIP, 1.2),
    }
    alphas = torch.zeros(14, 8)
    for e, (op, logit) in hot.items():
        alphas[e, op] = logit
    alphas[1, NONE] = 4.0  # 'none' is the largest weight of edge 1, and never chosen
    normal_betas = torch.zeros(14)
    # node 1: edge weights softmax(-5, 0, 5) = 4.5e-5, .0067, .9933: products 3.3e-5, .0034, .278
    normal_betas[2:5] = torch.tensor([-5.0, 0.0, 5.0])
    # node 3: softmax(0, 0, 4, 4, 0) = .0089 .0089 .4866 .4866 .0089: products .0066 .0057 .0928 .1174 .0029
    normal_betas[9:14] = torch.tensor([0.0, 0.0, 4.0, 4.0, 0.0])
    reduce = torch.randn(14, 8, generator=torch.Generator().manual_seed(1))  # no ties
    return {"normal": alphas, "reduce": reduce}, {
        "normal": normal_betas,
        "reduce": torch.zeros(14),
    }


def test_derivation_ranks_edges_by_edge_weight_times_op_weight() -> None:
    alphas, betas = derivation_parameters()
    pc, darts = PCDARTS(SPACE), DARTS(SPACE)
    with torch.no_grad():
        for t in SPACE.cell_types:
            pc.alphas[t].copy_(alphas[t])
            pc.edge_norm.betas[t].copy_(betas[t])
            darts.alphas[t].copy_(alphas[t])
    got, on_alphas = pc.derive(), darts.derive()
    assert isinstance(got, Genotype) and isinstance(on_alphas, Genotype)
    # the DARTS rule on the alphas alone
    assert on_alphas.normal == [
        ("sep_conv_5x5", 0),  # node 0: edge 1's 'none' is ignored, its max_pool (.043 < .514) ranks second
        ("max_pool_3x3", 1),
        ("sep_conv_3x3", 0),  # node 1: edges 2 and 3
        ("dil_conv_3x3", 1),
        ("dil_conv_5x5", 2),  # node 2: edges 7 and 5
        ("avg_pool_3x3", 0),
        ("sep_conv_3x3", 0),  # node 3: edges 9 and 10
        ("sep_conv_5x5", 1),
    ]
    # PC-DARTS: the betas of nodes 1 and 3 change the ranking, not the op on an edge
    assert got.normal == [
        ("sep_conv_5x5", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),  # node 1: edge 4 (.278), then edge 3 (.0034)
        ("dil_conv_3x3", 1),
        ("dil_conv_5x5", 2),
        ("avg_pool_3x3", 0),
        ("dil_conv_3x3", 3),  # node 3: edge 12 (.117), then edge 11 (.093)
        ("max_pool_3x3", 2),
    ]
    # equal betas in the reduce cell (every edge of a node weighs the same): the DARTS ranking
    assert got.reduce == on_alphas.reduce
    # without edge normalisation PC-DARTS derives exactly as DARTS
    plain = PCDARTS(SPACE, edge_norm=False)
    with torch.no_grad():
        for t in SPACE.cell_types:
            plain.alphas[t].copy_(alphas[t])
    assert plain.derive() == on_alphas


# --------------------------------------------------------------------------------- short searches


def pcdarts_config(tmp_path: Path, **overrides: Any) -> SearchConfig:
    values = {"C": 8, "seed": 4, "method_options": {"arch_start_epoch": 1}, **overrides}
    return tiny_search(tmp_path, "pc-darts", **values)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def digits_search(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-epoch PC-DARTS search whose architecture updates start at epoch 2, with the architecture
    parameters recorded at the start of every epoch."""
    folder = tmp_path_factory.mktemp("pcdarts")
    starts: list[dict[str, list[Any]]] = []
    train_epoch = SearchRunner.train_epoch

    def recording(self: SearchRunner, epoch: int) -> Any:
        starts.append({n: p.detach().tolist() for n, p in self.algorithm.named_parameters()})
        return train_epoch(self, epoch)

    config = pcdarts_config(folder, epochs=3, method_options={"arch_start_epoch": 2})
    with pytest.MonkeyPatch.context() as m:
        m.setattr(SearchRunner, "train_epoch", recording)
        result = run_search(config, progress=False)
    return {"result": result, "starts": starts, "dir": folder / "run"}


def test_architecture_updates_start_at_the_configured_epoch(digits_search: dict[str, Any]) -> None:
    run: Path = digits_search["dir"]
    rows = [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines()]
    starts = digits_search["starts"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and len(starts) == 3
    names = {"alphas.normal", "alphas.reduce", "edge_norm.betas.normal", "edge_norm.betas.reduce"}
    for epoch, (row, start) in enumerate(zip(rows, starts, strict=True)):
        assert set(row["parameters"]) == names == set(start)
        for name in names:
            if epoch < 2:  # weight-only epochs: not a single architecture parameter moved
                assert row["parameters"][name] == start[name], (epoch, name)
            else:
                assert row["parameters"][name] != start[name], (epoch, name)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["train_loss"] > 0  # the weights trained in the first epochs


def test_a_digits_search_gives_a_valid_genotype_from_the_product_weights(
    digits_search: dict[str, Any],
) -> None:
    result, run = digits_search["result"], digits_search["dir"]
    genotype = result.genotype
    assert isinstance(genotype, Genotype)
    assert Genotype.parse((run / "genotype.txt").read_text().strip()) == genotype
    for t in ("normal", "reduce"):
        cell = genotype.cell(t)
        assert cell.num_nodes == 4
        for j, node in enumerate(cell.nodes):
            assert len(node) == 2 and len({s for _, s in node}) == 2
            assert all(op in OPS and op != "none" and 0 <= s < j + 2 for op, s in node)
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "pc-darts" and config["supernet_options"] == {
        "executor": "auto",  # the default: fast on CUDA, the reference loop here
        "partial_k": 4,
        "partial_bypass": "max",
    }
    assert config["method_options"]["edge_norm"] is True and config["method_options"]["arch_start_epoch"] == 2
    supernet = result.model.supernet
    channels = [8, 16, 32]  # C = 8 and two reduction cells (layers 3)
    for cell, c in zip(supernet.cells, channels, strict=True):
        for edge in cell.edges:
            assert edge.partial.k == 4
            convs = [m for m in edge.modules() if isinstance(m, torch.nn.Conv2d)]
            assert {m.in_channels for m in convs} == {c // 4}
    # the genotype is the DARTS rule on softmax(alpha) * softmax(beta) of the final parameters
    last = json.loads((run / "alphas.jsonl").read_text().splitlines()[-1])
    for t in ("normal", "reduce"):
        alphas, betas = last["parameters"][f"alphas.{t}"], last["parameters"][f"edge_norm.betas.{t}"]
        edge = hand_edge_weights(betas, DARTS_NODE_EDGES)
        product = torch.tensor([[edge[e] * p for p in softmax_list(alphas[e])] for e in range(14)])
        torch.testing.assert_close(torch.tensor(last["weights"][t]), product.float(), rtol=1e-5, atol=1e-7)
        assert derive_darts_cell(product, SPACE, cell_type=t).nodes == genotype.cell(t).nodes


def test_an_nb201_search_gives_a_valid_cell(tmp_path: Path) -> None:
    require_shared(TABLE)
    config = pcdarts_config(tmp_path, space="nb201", layers=1, nb201_table=str(TABLE), run_name="nb")
    result = run_search(config, progress=False)
    arch = result.genotype
    assert isinstance(arch, NB201Arch)
    assert NB201Arch.parse((result.run_dir / "genotype.txt").read_text().strip()) == arch
    algorithm = result.model.algorithm
    ops = NB201Space().ops
    alphas = algorithm.alphas["cell"].detach()
    assert alphas.shape == (6, len(ops)) and algorithm.edge_norm.betas["cell"].shape == (6,)
    # a positive edge weight scales a row: the op chosen on each edge is still the argmax of its alphas
    assert list(arch.ops) == [ops[int(i)] for i in alphas.argmax(-1)]
    assert all(edge.partial.k == 4 for cell in result.model.supernet.cells for edge in cell.edges)
    table = NB201Table.from_csv(TABLE)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["table"]["c10_test"] == table.lookup(r["genotype"]).c10_test
    history = [json.loads(line) for line in (result.run_dir / "alphas.jsonl").read_text().splitlines()]
    assert (
        history[1]["parameters"]["edge_norm.betas.cell"] != history[0]["parameters"]["edge_norm.betas.cell"]
    )  # epoch 1 updates


# ------------------------------------------------------------------------------------- config and CLI


def test_published_defaults_resolve_from_the_config() -> None:
    resolved = SearchConfig(method="pc-darts").resolved()
    assert (resolved.batch_size, resolved.epochs, resolved.supernet.partial_k) == (256, 50, 4)
    assert resolved.lr == 0.1 and resolved.arch_lr == 6e-4 and resolved.arch_weight_decay == 1e-3
    assert resolved.supernet.partial_bypass == "max" and (resolved.C, resolved.layers) == (16, 8)
    assert isinstance(resolved.options, PCDARTSOptions)
    assert resolved.options.edge_norm and resolved.options.arch_start_epoch == 15
    assert SearchConfig(method="darts").resolved().supernet.partial_k == 1  # off for the other methods
    two = SearchConfig(method="pc-darts", supernet_options={"partial_k": 2})
    assert two.resolved().supernet.partial_k == 2
    bypass = SearchConfig(method="pc-darts", supernet_options={"partial_bypass": "avg"})
    assert bypass.resolved().supernet.partial_bypass == "avg"


def cli_args(tmp_path: Path, *extra: str) -> list[str]:
    args = ["search", "--dataset", "digits", "--limit", "32", "--batch-size", "16", "--C", "8"]
    args += ["--layers", "3", "--epochs", "1", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)]
    return [*args, *extra]


@pytest.mark.parametrize("method", ["pc-darts", "darts"])
def test_the_cli_partial_k_flag_reaches_the_supernet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    runners: list[SearchRunner] = []
    run = SearchRunner.run

    def recording(self: SearchRunner) -> Any:
        runners.append(self)
        return run(self)

    monkeypatch.setattr(SearchRunner, "run", recording)
    args = cli_args(tmp_path, "--method", method, "--partial-k", "2", "--partial-bypass", "avg")
    if method == "pc-darts":
        args += ["--arch-start-epoch", "0"]
    assert main([*args, "--run-name", "cli"]) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["method"] == method and config["supernet_options"]["partial_k"] == 2
    assert config["supernet_options"]["partial_bypass"] == "avg"
    (runner,) = runners
    edges = [edge for cell in runner.model.supernet.cells for edge in cell.edges]
    assert edges and all(edge.partial == PartialChannels(2, "avg") for edge in edges)
    assert (runner.algorithm.edge_norm is not None) is (method == "pc-darts")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["--method", "pc-darts", "--partial-k", "3", "--C", "16"],
            "--partial-k 3 does not divide the initial channels --C 16",
        ),
        (
            ["--method", "darts", "--partial-k", "16"],
            "--partial-k 16 does not divide the initial channels --C 8",
        ),
        (["--method", "pc-darts", "--partial-k", "0"], "(--partial-k) must be >= 1"),
        (["--method", "pc-darts", "--partial-k", "-2"], "(--partial-k) must be >= 1"),
        (["--method", "entrannas", "--partial-k", "2"], "must split into 2 parts of an even size"),
    ],
)
def test_bad_partial_channels_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    assert main(cli_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_bad_bypass_pools_and_channel_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--method", "pc-darts", "--partial-bypass", "min"])
    assert exit_info.value.code == 2
    assert "--partial-bypass: invalid choice: 'min'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\(--partial-bypass\) must be one of max, avg, got 'min'"):
        SearchConfig(method="pc-darts", supernet_options={"partial_bypass": "min"}).resolved()
    with pytest.raises(ConfigError, match="--partial-k 3 does not divide the initial channels --C 16"):
        SearchConfig(method="pc-darts", supernet_options={"partial_k": 3}).resolved()
    with pytest.raises(ConfigError, match="--partial-k 4 does not divide the initial channels --C 6"):
        SearchModel.build("pc-darts", C=6, layers=3)
    with pytest.raises(ConfigError, match="see 2 channels after the bottleneck"):
        SearchModel.build("entrannas", C=8, layers=3, partial_k=2)
    with pytest.raises(ValueError, match="must divide the edge's 6 channels"):
        MixedEdge(6, 1, OPS, partial=PartialChannels(4))
    with pytest.raises(ValueError, match="k >= 1"):
        PartialChannels(0)
    with pytest.raises(ValueError, match="bypass pool must be one of"):
        PartialChannels(2, "min")


# ------------------------------------------------------------------------------------------ memory


def edge_op_parameters(c: int, stride: int) -> int:
    """Parameters of one DARTS mixed edge on ``c`` channels (BN affine=False, pools and the identity have
    none): sep convs are two (depthwise k*k*c + pointwise c*c) blocks, dil convs one; a stride-2 skip is a
    FactorizedReduce of two 1x1 convs c -> c/2."""
    sep = sum(2 * (k * k * c + c * c) for k in (3, 5))
    dil = sum(k * k * c + c * c for k in (3, 5))
    reduce_skip = 2 * c * (c // 2) if stride == 2 else 0
    return sep + dil + reduce_skip


def test_partial_channels_shrink_the_op_parameters() -> None:
    k, C = 4, 16
    darts = SearchModel.build("darts", C=C, layers=3).supernet
    pc = SearchModel.build("pc-darts", C=C, layers=3).supernet
    assert all(edge.partial.k == k for cell in pc.cells for edge in cell.edges)

    def count(net: torch.nn.Module, edges: bool) -> int:
        return sum(p.numel() for n, p in net.named_parameters() if (".edges." in n) is edges)

    # layers 3: a normal cell on C channels, reduction cells on 2C and 4C (sources 0 and 1 stride 2)
    cells = [(C, False), (2 * C, True), (4 * C, True)]
    assert [cell.reduction for cell in darts.cells] == [r for _, r in cells]

    def expected(kk: int) -> int:
        return sum(
            edge_op_parameters(c // kk, 2 if reduction and edge.source < 2 else 1)
            for c, reduction in cells
            for edge in SPACE.edges
        )

    assert count(darts, edges=True) == expected(1)
    assert count(pc, edges=True) == expected(k)
    assert count(pc, edges=False) == count(darts, edges=False)  # stem, preprocessing, classifier: the same
    # depthwise convs shrink by k, pointwise ones by k^2: more than k overall, less than k^2
    assert count(darts, edges=True) / k**2 < count(pc, edges=True) < count(darts, edges=True) / k
    assert sum(p.numel() for p in pc.parameters()) < sum(p.numel() for p in darts.parameters())


# ------------------------------------------------------------------ edge normalisation as a switch


@pytest.mark.parametrize("method", ["darts", "pdarts", "ddsas", "entrannas"])
def test_edge_norm_is_a_switch_of_other_methods(method: str) -> None:
    """``--edge-norm`` on DARTS, P-DARTS, DDSAS and EnTranNAS: each node's incoming edges share weight 1
    (the rows of a node sum to 1 in all), and the betas get gradients."""
    torch.manual_seed(0)
    model = SearchModel.build(method, C=4, layers=3, edge_norm=True)
    alg = model.algorithm
    assert alg.edge_norm is not None and SearchModel.build(method, C=4, layers=3).algorithm.edge_norm is None
    with torch.no_grad():
        for b in alg.edge_norm.betas.values():
            b.copy_(torch.randn(b.shape))
    model.start_step(0, 0)
    weights = alg.arch_weights()
    for t, w in weights.items():
        for node in range(SPACE.num_nodes):
            edges = [e.index for e in SPACE.edges if e.node == node]
            assert float(w[edges].sum()) == pytest.approx(1.0, abs=1e-5), (t, node)
        assert len({round(float(w[e.index].sum()), 6) for e in SPACE.edges}) > 2  # not all equal
    model(torch.randn(2, 3, 8, 8)).square().sum().backward()
    assert all(float(b.grad.abs().sum()) > 0 for b in alg.edge_norm.betas.values())


def test_pdarts_carries_the_edge_betas_with_the_alphas() -> None:
    from fastnas.algorithms import PDARTS

    previous = PDARTS(SPACE, edge_norm=True, carry_alphas=True)
    following = PDARTS(SPACE, edge_norm=True, carry_alphas=True)
    following.start_stage(1, previous)
    for t in SPACE.cell_types:
        assert torch.equal(following.edge_norm.betas[t], previous.edge_norm.betas[t])
    fresh = PDARTS(SPACE, edge_norm=True)
    fresh.start_stage(1, previous)
    assert not torch.equal(fresh.edge_norm.betas["normal"], previous.edge_norm.betas["normal"])


def test_entrannas_dst_refuses_edge_norm() -> None:
    with pytest.raises(ConfigError, match="edge_norm .* does not apply to entrannas-dst"):
        SearchModel.build("entrannas-dst", C=4, layers=3, edge_norm=True)
