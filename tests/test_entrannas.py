"""EnTranNAS and EnTranNAS-DST (seed 002 sections 2.2-2.5; REFERENCE.md section 6)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from fastnas import Genotype, SearchConfig, load_genotype, run_search
from fastnas.algorithms import EnTranNAS, EnTranNASDST
from fastnas.algorithms.entrannas import CIFAR_DEFAULTS, dst_weights, temperature
from fastnas.cli import main
from fastnas.genotype import CellGenotype
from fastnas.methods import get_method
from fastnas.nn.entrannas import EnTranCell, EnTranNASSupernet, resolve_engine_cells, select_pairs
from fastnas.nn.eval_network import EvalCell, NetworkCIFAR
from fastnas.nn.skeleton import CellPlan
from fastnas.ops import EXTENDED_OPS
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace, build_space
from fastnas.train.consistency import child_weights, measure_consistency

SPACE = DartsSpace()
CELL = CellGenotype(
    nodes=(
        (("sep_conv_3x3", 0), ("skip_connect", 1)),
        (("max_pool_3x3", 0), ("dil_conv_3x3", 2)),
        (("sep_conv_3x3", 0), ("avg_pool_3x3", 1), ("dil_conv_5x5", 3)),  # (sep3, 0) again: shared
        (("skip_connect", 2),),
    ),
    concat=(2, 3, 4, 5),
)


def _selection(cell: CellGenotype, space: DartsSpace) -> list[list[tuple[int, int]]]:
    return [[(i, space.op_index(op)) for op, i in node] for node in cell.nodes]


def _copy_into_eval(src: EnTranCell, dst: EvalCell, cell: CellGenotype, space: DartsSpace) -> None:
    dst.preprocess0.load_state_dict(src.preprocess0.state_dict())
    dst.preprocess1.load_state_dict(src.preprocess1.state_dict())
    edge_of = {(e.node, e.source): e.index for e in space.edges}
    j = 0
    for node, pairs in enumerate(cell.nodes):
        for op, i in pairs:
            unit = i if src.feature_sharing else edge_of[(node, i)]
            dst.ops[j].load_state_dict(src.ops[unit][space.op_index(op)].state_dict())
            j += 1


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)


def _eval_pair(reduction: bool, sharing: bool, engine: bool) -> tuple[EnTranCell, EvalCell]:
    torch.manual_seed(0)
    cell = EnTranCell(
        SPACE, CellPlan.standalone(6, 8, 4, reduction, False), engine=engine, feature_sharing=sharing,
        bottleneck=0, affine=True, pool_bn=False,
    )  # fmt: skip
    ref = EvalCell(CELL, CellPlan.standalone(6, 8, 4, reduction, False))
    _randomise(cell)
    _copy_into_eval(cell, ref, CELL, SPACE)
    return cell.eval(), ref.eval()


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("sharing", [False, True])
def test_transit_cell_equals_eval_cell(reduction: bool, sharing: bool) -> None:
    cell, ref = _eval_pair(reduction, sharing, engine=False)
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 8, 8, 8)
    out = cell(s0, s1, None, _selection(CELL, SPACE))
    torch.testing.assert_close(out, ref(s0, s1), rtol=1e-5, atol=1e-5)
    # a different derived cell gives a different output (the test can fail)
    other = _selection(CELL, SPACE)
    other[0] = [(0, SPACE.op_index("sep_conv_5x5"))]
    assert not torch.allclose(cell(s0, s1, None, other), out)


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("sharing", [False, True])
def test_engine_cell_with_one_hot_weights_equals_derived_cell(reduction: bool, sharing: bool) -> None:
    cell, ref = _eval_pair(reduction, sharing, engine=True)
    weights = torch.zeros(SPACE.num_edges, SPACE.num_ops)
    edge_of = {(e.node, e.source): e.index for e in SPACE.edges}
    for node, pairs in enumerate(CELL.nodes):
        for op, i in pairs:
            weights[edge_of[(node, i)], SPACE.op_index(op)] = 1.0
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(cell(s0, s1, weights), ref(s0, s1), rtol=1e-5, atol=1e-5)


def test_bottleneck_engine_one_hot_equals_transit() -> None:
    torch.manual_seed(1)
    cell = EnTranCell(
        SPACE, CellPlan.standalone(16, 16, 16, False, False), engine=True, feature_sharing=True, bottleneck=4
    ).eval()
    assert cell.op_channels == 4 and len(cell.reduce) == SPACE.num_nodes + 1 and len(cell.restore) == 4
    assert cell.ops[0][SPACE.op_index("sep_conv_3x3")][0][1].in_channels == 4  # ops run on C / 4
    weights = torch.zeros(SPACE.num_edges, SPACE.num_ops)
    sel = _selection(CELL, SPACE)
    edge_of = {(e.node, e.source): e.index for e in SPACE.edges}
    for node, pairs in enumerate(sel):
        for i, k in pairs:
            weights[edge_of[(node, i)], k] = 1.0
    s0, s1 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    engine_out = cell(s0, s1, weights)
    cell.engine = False
    torch.testing.assert_close(cell(s0, s1, None, sel), engine_out, rtol=1e-5, atol=1e-5)


def _count_calls(cell: EnTranCell) -> dict[tuple[int, int], int]:
    calls: dict[tuple[int, int], int] = {}
    for u, unit in enumerate(cell.ops):
        for k, op in enumerate(unit):
            op.register_forward_hook(lambda *_, key=(u, k): calls.__setitem__(key, calls.get(key, 0) + 1))
    return calls


def test_transit_cell_runs_only_the_derived_ops() -> None:
    cell = EnTranCell(
        SPACE, CellPlan.standalone(4, 4, 4, False, False), engine=False, feature_sharing=False, bottleneck=0
    )
    calls = _count_calls(cell)
    cell(torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6), None, _selection(CELL, SPACE))
    edge_of = {(e.node, e.source): e.index for e in SPACE.edges}
    expected = {
        (edge_of[(n, i)], SPACE.op_index(op)) for n, pairs in enumerate(CELL.nodes) for op, i in pairs
    }
    assert set(calls) == expected and all(v == 1 for v in calls.values())
    # with feature sharing, (sep_conv_3x3, 0) feeds nodes 0 and 2 but runs once
    shared = EnTranCell(
        SPACE, CellPlan.standalone(4, 4, 4, False, False), engine=False, feature_sharing=True, bottleneck=0
    )
    calls = _count_calls(shared)
    shared(torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6), None, _selection(CELL, SPACE))
    assert calls[(0, SPACE.op_index("sep_conv_3x3"))] == 1 and len(calls) == 7


def test_feature_sharing_op_count() -> None:
    """Seed section 2.3: (n-1) x K-bar weighted ops per cell with sharing, |E| x K-bar without."""
    k_bar = 4  # sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5 (stride 1)
    n = SPACE.num_nodes + 2
    shared = EnTranCell(
        SPACE, CellPlan.standalone(4, 4, 4, False, False), engine=True, feature_sharing=True, bottleneck=0
    )
    plain = EnTranCell(
        SPACE, CellPlan.standalone(4, 4, 4, False, False), engine=True, feature_sharing=False, bottleneck=0
    )
    assert shared.num_weighted_ops() == (n - 1) * k_bar == 20
    assert plain.num_weighted_ops() == SPACE.num_edges * k_bar == 56
    # op calls in an Engine forward: every non-none op once per source vs once per edge
    calls_shared, calls_plain = _count_calls(shared), _count_calls(plain)
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(SPACE.num_edges, SPACE.num_ops), -1)
    shared(x, x, w)
    plain(x, x, w)
    assert sum(calls_shared.values()) == (n - 1) * 7
    assert sum(calls_plain.values()) == SPACE.num_edges * 7


# Hand-chosen derived cells, (source, op) per node, that differ between the two cell types in ops and inputs.
_PICKS = {
    "normal": [
        [(0, "sep_conv_3x3"), (1, "max_pool_3x3")],
        [(2, "dil_conv_3x3"), (0, "skip_connect")],
        [(1, "avg_pool_3x3"), (3, "sep_conv_5x5")],
        [(4, "dil_conv_5x5"), (2, "skip_connect")],
    ],
    "reduce": [
        [(1, "dil_conv_5x5"), (0, "avg_pool_3x3")],
        [(1, "sep_conv_5x5"), (2, "max_pool_3x3")],
        [(0, "skip_connect"), (2, "dil_conv_3x3")],
        [(3, "sep_conv_3x3"), (1, "max_pool_3x3")],
    ],
}


def _alphas_for_picks(space: DartsSpace, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Alphas whose DARTS-rule derivation is ``_PICKS``: small noise, a large alpha on each picked pair,
    and an even larger ``none`` everywhere (the rule must ignore it)."""
    edge_of = {(e.node, e.source): e.index for e in space.edges}
    out = {}
    for t, picks in _PICKS.items():
        a = 0.1 * torch.randn(space.num_edges, space.num_ops, generator=gen)
        a[:, space.op_index("none")] = 12.0
        for node, pairs in enumerate(picks):
            for source, op in pairs:
                a[edge_of[(node, source)], space.op_index(op)] = 10.0
        out[t] = a
    return out


def test_transit_cells_run_their_own_cell_types_sub_graph() -> None:
    """Every Transit-cell runs the sub-graph derived from the weights of its own cell type (a reduction
    Transit-cell the reduction sub-graph, not the normal one), each derived (source, op) exactly once."""
    torch.manual_seed(0)
    model = SearchModel.build("entrannas", C=4, layers=6, engine_cells="first")
    net, space = model.supernet, model.space
    assert net.cell_types == ["normal", "normal", "reduce", "normal", "reduce", "normal"]
    assert net.engine_cells == (0, 2)
    transit = [i for i in range(6) if i not in net.engine_cells]
    assert {net.cell_types[i] for i in transit} == {"normal", "reduce"}  # both types have a Transit-cell
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t, a in _alphas_for_picks(space, gen).items():
            model.algorithm.alphas[t].copy_(a)
    weights = model.arch_weights()
    expected = {
        t: {(i, space.op_index(op)) for node in picks for i, op in node} for t, picks in _PICKS.items()
    }
    assert expected["normal"] != expected["reduce"]
    # the derivation (DARTS rule, Eq. 4) gives back the hand-chosen cells
    genotype = model.genotype()
    for t, picks in _PICKS.items():
        cell = genotype.cell(t)
        assert [sorted((i, op) for op, i in node) for node in cell.nodes] == [sorted(n) for n in picks]
        sel = select_pairs(weights[t], space, "top2")
        assert {(i, k) for node in sel for i, k in node} == expected[t]
    calls: dict[int, dict[tuple[int, int], int]] = {}
    for c in transit:
        calls[c] = _count_calls(net.cells[c])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        logits = net(x, weights)
    for c in transit:
        t = net.cell_types[c]
        assert set(calls[c]) == expected[t], (c, t)
        assert all(v == 1 for v in calls[c].values()), (c, calls[c])
    # output level: the network equals the cells run by hand with the hand-chosen selections
    sel_by_hand = {
        t: [[(i, space.op_index(op)) for i, op in node] for node in picks] for t, picks in _PICKS.items()
    }

    def by_hand(transit_selection: dict[str, list[list[tuple[int, int]]]]) -> torch.Tensor:
        s0 = s1 = net.stem(x)
        for c, (cell, t) in enumerate(zip(net.cells, net.cell_types, strict=True)):
            engine = c in net.engine_cells
            s0, s1 = s1, cell(s0, s1, weights[t]) if engine else cell(s0, s1, None, transit_selection[t])
        return net.classifier(s1.mean(dim=(2, 3)))

    with torch.no_grad():
        torch.testing.assert_close(logits, by_hand(sel_by_hand), rtol=1e-5, atol=1e-5)
        # ... while a reduction Transit-cell running the normal sub-graph gives another output
        wrong = {"normal": sel_by_hand["normal"], "reduce": sel_by_hand["normal"]}
        assert not torch.allclose(by_hand(wrong), logits, rtol=1e-3, atol=1e-4)


def test_engine_cell_configuration() -> None:
    net = EnTranNASSupernet(SPACE, C=4, layers=8, num_classes=10)
    assert net.engine_cells == (0, 2)  # first normal and first reduction cell (Figure 4)
    assert [c.engine for c in net.cells] == [True, False, True] + [False] * 5
    assert not net.cells[-1].engine  # the final cell is a Transit-cell
    types = net.cell_types
    assert resolve_engine_cells("all", types) == tuple(range(8))
    assert resolve_engine_cells("last", types) == (5, 7)
    assert resolve_engine_cells("0,5", types) == (0, 5)
    with pytest.raises(ValueError, match="no Engine-cell"):
        resolve_engine_cells((0, 1), types)
    with pytest.raises(ValueError, match="must be in"):
        resolve_engine_cells((0, 9), types)


def test_temperature_annealing() -> None:
    alg = EnTranNAS(SPACE)
    assert float(alg.tau) == pytest.approx(5.0)
    for epoch in (0, 1, 10, 49):
        alg.on_epoch_start(epoch, 50)
        assert float(alg.tau) == pytest.approx(5.0 * 0.923**epoch)
        p = alg.arch_weights()["normal"]
        torch.testing.assert_close(p, torch.softmax(alg.alphas["normal"] / (5.0 * 0.923**epoch), -1))
    assert temperature(2, 1.0, 0.9) == pytest.approx(0.81)


# -------------------------------------------------------------------------------------------- DST
TOY = DartsSpace(ops=("max_pool_3x3", "skip_connect", "sep_conv_3x3"), num_nodes=1, multiplier=1)


@pytest.mark.parametrize(
    ("p", "t", "expected_p_hat", "expected_q_hat"),
    [
        # max over the node = 0.5; t = 0.5
        (
            [[0.5, 0.3, 0.2], [0.1, 0.4, 0.5]],
            0.5,
            [[1.0, 0.6, 0.4], [0.2, 0.8, 1.0]],
            [[0.5 / 0.6, 0.1 / 0.6, 0.0], [0.0, 0.3 / 0.8, 0.5 / 0.8]],
        ),
        # t = 0.7: q = [[.3, 0, 0], [0, .1, .3]]
        (
            [[0.5, 0.3, 0.2], [0.1, 0.4, 0.5]],
            0.7,
            [[1.0, 0.6, 0.4], [0.2, 0.8, 1.0]],
            [[1.0, 0.0, 0.0], [0.0, 0.25, 0.75]],
        ),
        # t = 0.9, max 0.6: p_hat = [[1, .5, 1/6], [1/3, .5, 5/6]]; the second edge is cut entirely
        (
            [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]],
            0.9,
            [[1.0, 0.5, 1 / 6], [1 / 3, 0.5, 5 / 6]],
            [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ),
    ],
)
def test_dst_equations_7_to_9(p: list, t: float, expected_p_hat: list, expected_q_hat: list) -> None:
    beta = torch.tensor([math.log(t / (1 - t))])
    p_hat, q, q_hat = dst_weights(torch.tensor(p), beta, TOY)
    torch.testing.assert_close(p_hat, torch.tensor(expected_p_hat), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q, torch.relu(torch.tensor(expected_p_hat) - t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_hat, torch.tensor(expected_q_hat), rtol=1e-5, atol=1e-6)


# Two intermediate nodes: edges 0-1 go into node 0 (sources 0, 1), edges 2-4 into node 1 (sources 0, 1, 2).
TOY2 = DartsSpace(ops=("max_pool_3x3", "skip_connect", "sep_conv_3x3"), num_nodes=2, multiplier=2)
TOY2_P = [
    [0.5, 0.3, 0.2],  # node 0: max 0.5
    [0.1, 0.4, 0.5],
    [0.8, 0.1, 0.1],  # node 1: max 0.8 (the max over the whole cell)
    [0.2, 0.2, 0.6],
    [0.3, 0.3, 0.4],
]


@pytest.mark.parametrize(
    ("t", "expected_q", "expected_q_hat"),
    [
        # t = (0.5, 0.4). Eq. 7 p_hat: node 0 = p / 0.5, node 1 = p / 0.8 (see expected_p_hat below).
        # Eq. 8 q = ReLU(p_hat - t_j); Eq. 9 q_hat = q / row sum.
        (
            (0.5, 0.4),
            [[0.5, 0.1, 0.0], [0.0, 0.3, 0.5], [0.6, 0.0, 0.0], [0.0, 0.0, 0.35], [0.0, 0.0, 0.1]],
            [[5 / 6, 1 / 6, 0.0], [0.0, 3 / 8, 5 / 8], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]],
        ),
        # t = (0.7, 0.6): the edge from state 2 into node 1 is cut entirely (its q_hat row stays 0)
        (
            (0.7, 0.6),
            [[0.3, 0.0, 0.0], [0.0, 0.1, 0.3], [0.4, 0.0, 0.0], [0.0, 0.0, 0.15], [0.0, 0.0, 0.0]],
            [[1.0, 0.0, 0.0], [0.0, 0.25, 0.75], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
        ),
    ],
)
def test_dst_equations_7_to_9_normalise_per_node(t: tuple, expected_q: list, expected_q_hat: list) -> None:
    """Eq. 7 normalises by the max over the pairs into *each* node (0.5 for node 0, 0.8 for node 1),
    not by the max over the cell; Eq. 8 uses each node's own threshold."""
    expected_p_hat = [
        [1.0, 0.6, 0.4],
        [0.2, 0.8, 1.0],
        [1.0, 0.125, 0.125],
        [0.25, 0.25, 0.75],
        [0.375, 0.375, 0.5],
    ]
    beta = torch.tensor([math.log(tj / (1 - tj)) for tj in t])
    p_hat, q, q_hat = dst_weights(torch.tensor(TOY2_P), beta, TOY2)
    torch.testing.assert_close(p_hat, torch.tensor(expected_p_hat), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q, torch.tensor(expected_q), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_hat, torch.tensor(expected_q_hat), rtol=1e-5, atol=1e-6)
    # Eq. 10 through the algorithm: alphas with softmax(alpha / tau) = p derive exactly S_j = {q_hat > 0}
    alg = EnTranNASDST(TOY2)
    tau = float(alg.tau)
    with torch.no_grad():
        for cell_type in ("normal", "reduce"):
            alg.alphas[cell_type].copy_(tau * torch.tensor(TOY2_P).log())
            alg.betas[cell_type].copy_(beta)
    expected_cell = [
        sorted(
            (TOY2.ops[k], e.source)
            for e in TOY2.edges
            if e.node == node
            for k in range(3)
            if expected_q_hat[e.index][k] > 0
        )
        for node in range(2)
    ]
    genotype = alg.derive()
    for cell_type in ("normal", "reduce"):
        assert [sorted(node) for node in genotype.cell(cell_type).nodes] == expected_cell
        torch.testing.assert_close(
            alg.arch_weights()[cell_type], torch.tensor(expected_q_hat), rtol=1e-4, atol=1e-6
        )


def test_dst_every_node_keeps_an_input() -> None:
    gen = torch.Generator().manual_seed(0)
    alg = EnTranNASDST(SPACE)
    for trial in range(60):
        scale = [1e-3, 1.0, 30.0][trial % 3]
        beta_scale = [0.0, 5.0, 1e4][(trial // 3) % 3]
        with torch.no_grad():
            for a in alg.alphas.values():
                a.copy_(scale * torch.randn(a.shape, generator=gen))
            for b in alg.betas.values():
                b.copy_(beta_scale * torch.randn(b.shape, generator=gen).abs() + (50.0 if trial % 2 else 0.0))
        alg.tau.fill_([5.0, 0.05][trial % 2])
        genotype = alg.derive()
        for cell in (genotype.cell("normal"), genotype.cell("reduce")):
            assert all(len(node) >= 1 for node in cell.nodes)
        for w in alg.arch_weights().values():
            assert torch.isfinite(w).all()


def test_dst_genotype_is_exactly_the_positive_pairs() -> None:
    torch.manual_seed(3)
    alg = EnTranNASDST(SPACE)
    with torch.no_grad():
        for a in alg.alphas.values():
            a.normal_(0, 2.0)
        for b in alg.betas.values():
            b.uniform_(-1, 1)
    weights = alg.arch_weights()
    genotype = alg.derive()
    assert "none" not in alg.space.ops and alg.space.num_ops == 7
    for cell_type in ("normal", "reduce"):
        expected = {
            (e.node, e.source, alg.space.ops[k])
            for e in alg.space.edges
            for k in range(alg.space.num_ops)
            if weights[cell_type][e.index, k] > 0
        }
        got = {(n, i, op) for n, node in enumerate(genotype.cell(cell_type).nodes) for op, i in node}
        assert got == expected
    # the supernet's Transit rule selects the same set
    sel = select_pairs(weights["normal"], alg.space, "nonzero")
    assert {(n, i, k) for n, ps in enumerate(sel) for i, k in ps} == {
        (n, i, alg.space.op_index(op))
        for n, node in enumerate(genotype.cell("normal").nodes)
        for op, i in node
    }
    # the genotype retrains: it builds the evaluation network and runs
    net = NetworkCIFAR(4, 10, 5, False, genotype).eval()
    assert net(torch.randn(1, 3, 8, 8))[0].shape == (1, 10)


def test_dst_regulariser_equation_11() -> None:
    """Eq. 11: lam * 1/(n-1) * sum_j -log t_j, one mean over the nodes (of every searched cell type); the
    per-cell-type form sums one mean per type."""
    betas_normal = [0.0, 1.0, -1.0, 2.0]
    minus_log_t_normal = [-math.log(1.0 / (1.0 + math.exp(-b))) for b in betas_normal]
    minus_log_t_reduce = [math.log(2.0)] * 4  # beta = 0: t = 1/2
    for mean, expected in (
        ("all-nodes", 0.2 * sum(minus_log_t_normal + minus_log_t_reduce) / 8),
        ("per-cell-type", 0.2 * (sum(minus_log_t_normal) / 4 + sum(minus_log_t_reduce) / 4)),
    ):
        alg = EnTranNASDST(SPACE, lam=0.2, sparsity_mean=mean)
        with torch.no_grad():
            alg.betas["normal"].copy_(torch.tensor(betas_normal))
            alg.betas["reduce"].zero_()
        loss = alg.extra_arch_loss()
        assert loss is not None and float(loss.detach()) == pytest.approx(expected, rel=1e-6), mean
    assert EnTranNASDST(SPACE).options.sparsity_mean == "all-nodes"  # the seed's form is the default
    assert EnTranNASDST(SPACE, lam=0.0).extra_arch_loss() is None


def _toy_dst_edges(lam: float) -> int:
    torch.manual_seed(0)
    model = SearchModel.build("entrannas-dst", C=4, layers=3, num_classes=4, lam=lam)
    opt = torch.optim.Adam(model.arch_parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    for _ in range(12):
        opt.zero_grad()
        model.loss(x, y, level="arch").backward(inputs=model.arch_parameters())
        opt.step()
    g = model.genotype()
    return sum(len(node) for t in ("normal", "reduce") for node in g.cell(t).nodes)


def test_dst_larger_lambda_gives_no_more_edges() -> None:
    edges = [_toy_dst_edges(lam) for lam in (0.0, 1.0, 10.0)]
    assert edges[0] >= edges[1] >= edges[2]
    assert edges[0] > edges[2]  # lambda does sparsify


def test_gradients_reach_alpha_and_beta() -> None:
    for method in ("entrannas", "entrannas-dst"):
        torch.manual_seed(0)
        model = SearchModel.build(method, C=4, layers=4, num_classes=3)
        loss = model.loss(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]), level="arch")
        loss.backward()
        for name, p in model.algorithm.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (method, name)


# ------------------------------------------------------------------------------- space, CLI, loop
def test_extended_space() -> None:
    space = build_space("darts-extended")
    assert space.ops == EXTENDED_OPS and space.num_ops == 13 and space.name == "darts-extended"
    assert EnTranNASDST(space).space.num_ops == 12  # the seed's 12 operations (no none)
    x = torch.randn(2, 4, 8, 8)
    from fastnas.ops import build_op

    for op in EXTENDED_OPS[8:]:
        assert build_op(op, 4, 1, affine=False)(x).shape == (2, 4, 8, 8)
        assert build_op(op, 4, 2, affine=False)(x).shape == (2, 4, 4, 4)
    # usable by DARTS as well
    model = SearchModel.build("darts", space=space, C=4, layers=3, num_classes=2)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2)


def test_published_defaults() -> None:
    d = get_method("entrannas").defaults
    assert d == CIFAR_DEFAULTS and get_method("entrannas-dst").defaults == d
    assert (d.batch_size, d.lr, d.lr_min, d.weight_decay, d.arch_lr, d.epochs, d.layers, d.C) == (
        512, 0.2, 0.0, 3e-4, 6e-4, 50, 8, 16,
    )  # fmt: skip


def test_cli_passes_lambda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    captured: dict[str, SearchConfig] = {}

    def fake_run(config: SearchConfig, progress: bool = True, overwrite: bool = False) -> None:
        captured["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr("fastnas.train.run_search", fake_run)
    assert (
        main(["search", "--method", "entrannas-dst", "--lambda", "0.05", "--space", "darts-extended"]) == 130
    )
    config = captured["config"]
    assert config.method_options == {"lam": 0.05} and config.space == "darts-extended"
    with pytest.raises(SystemExit):
        main(["search", "--method", "darts", "--lambda", "0.1"])
    assert "--lambda is an option of entrannas-dst, not of --method darts" in capsys.readouterr().err


def _one_hot_child(model: SearchModel, genotype: Genotype) -> dict[str, torch.Tensor]:
    """Child-net weights built here from the genotype: 1 on every derived (edge, op), 0 elsewhere."""
    space = model.space
    edge_of = {(e.node, e.source): e.index for e in space.edges}
    out = {}
    for cell_type in ("normal", "reduce"):
        w = torch.zeros(space.num_edges, space.num_ops)
        for node, pairs in enumerate(genotype.cell(cell_type).nodes):
            for op, source in pairs:
                w[edge_of[(node, source)], space.op_index(op)] = 1.0
        out[cell_type] = w
    return out


def _count_correct(
    model: SearchModel, batches: list[tuple[torch.Tensor, torch.Tensor]], weights: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of ``model.supernet`` under ``weights``, in evaluation mode."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model.supernet(x, weights)
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    model.train()
    return loss / count, 100.0 * correct / count


@pytest.mark.parametrize("method", ["entrannas", "entrannas-dst", "darts"])
def test_measure_consistency_matches_an_independent_evaluation(method: str) -> None:
    """Table 1: the super-net under its current edge weights and the child-net (the derived genotype as
    one-hot weights, inherited weights), both in evaluation mode, counted here independently."""
    torch.manual_seed(0)
    model = SearchModel.build(method, C=4, layers=5, num_classes=4)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)) for _ in range(2)
    ]
    with torch.no_grad():
        for a in model.algorithm.alphas.values():
            a.normal_(0, 3.0)
        model.supernet.classifier.weight.normal_(0, 3.0)  # logits far from uniform
        # running statistics of the data (one training-mode pass with BN momentum 1), so that the
        # evaluation-mode predictions vary from image to image
        for m in model.supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        model.supernet(torch.cat([x for x, _ in batches]), model.arch_weights())
        # half the labels are the super-net's predictions: its accuracy is >= 50%, the child-net's differs
        model.eval()
        for x, y in batches:
            y[:8] = model.supernet(x[:8], model.arch_weights()).argmax(1)
        model.train()
    genotype = model.genotype()
    with torch.no_grad():
        super_weights = {t: w.detach() for t, w in model.arch_weights().items()}
    child = _one_hot_child(model, genotype)
    assert all(not torch.equal(child[t], super_weights[t]) for t in child)
    super_loss, super_acc = _count_correct(model, batches, super_weights)
    child_loss, child_acc = _count_correct(model, batches, child)
    assert abs(super_loss - child_loss) > 1e-2 and super_acc != child_acc  # the two nets really differ here
    result = measure_consistency(model, batches, torch.device("cpu"))
    assert model.training  # the mode is restored
    assert result["super_acc"] == pytest.approx(super_acc, abs=1e-9)
    assert result["child_acc"] == pytest.approx(child_acc, abs=1e-9)
    assert result["super_loss"] == pytest.approx(super_loss, rel=1e-5)
    assert result["child_loss"] == pytest.approx(child_loss, rel=1e-5)
    assert result["drop"] == pytest.approx(super_acc - child_acc, abs=1e-9)
    assert result["genotype"] == genotype.to_literal()


@pytest.mark.parametrize(
    ("method", "layers", "space"),
    [("entrannas", 3, "darts"), ("entrannas-dst", 5, "darts"), ("darts", 3, "darts")],
)
def test_short_search_writes_genotype_and_consistency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, layers: int, space: str
) -> None:
    import fastnas.train.consistency as consistency

    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    original = consistency.measure_consistency

    def recording(
        model: SearchModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
        precision: str = "fp32", **sums: Any,
    ) -> dict[str, Any]:  # fmt: skip
        seen["batches"] = [(x.clone(), y.clone()) for x, y in batches]
        return original(model, seen["batches"], device, precision, **sums)

    monkeypatch.setattr(consistency, "measure_consistency", recording)
    config = SearchConfig(
        method=method, space=space, dataset="digits", limit=32, batch_size=16, C=4, layers=layers,
        epochs=1, device="cpu", out_dir=str(tmp_path), run_name="run",
    )  # fmt: skip
    result = run_search(config, progress=False)
    genotype = load_genotype(str(result.run_dir / "genotype.json"))
    assert genotype == result.genotype
    NetworkCIFAR(4, 10, 3, False, genotype, in_channels=1)  # retrainable
    data = json.loads((result.run_dir / "consistency.json").read_text())
    assert set(data) >= {"super_acc", "child_acc", "drop"}
    # consistency.json against the final model evaluated here on the same validation images
    assert sum(len(y) for _, y in seen["batches"]) > 0
    model = result.model
    with torch.no_grad():
        super_weights = {t: w.detach() for t, w in model.arch_weights().items()}
    super_loss, super_acc = _count_correct(model, seen["batches"], super_weights)
    child_loss, child_acc = _count_correct(model, seen["batches"], _one_hot_child(model, genotype))
    assert data["super_acc"] == pytest.approx(super_acc, abs=1e-9)
    assert data["child_acc"] == pytest.approx(child_acc, abs=1e-9)
    assert data["super_loss"] == pytest.approx(super_loss, rel=1e-5)
    assert data["child_loss"] == pytest.approx(child_loss, rel=1e-5)
    assert data["drop"] == pytest.approx(super_acc - child_acc, abs=1e-9)


def test_child_weights_are_one_hot_on_the_derived_pairs() -> None:
    torch.manual_seed(0)
    model = SearchModel.build("entrannas", C=4, layers=3, num_classes=2)
    g = model.genotype()
    w = child_weights(model, g)
    assert w["normal"].sum() == 8 and w["reduce"].sum() == 8
    # the Transit rule on the one-hot weights gives back the derived cell
    sel = select_pairs(w["normal"], model.space, "top2")
    assert sorted((n, i, k) for n, ps in enumerate(sel) for i, k in ps) == sorted(
        (n, i, model.space.op_index(op)) for n, node in enumerate(g.cell("normal").nodes) for op, i in node
    )


def test_ablation_options_reach_the_supernet_from_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--no-feature-sharing / --bottleneck / --engine-cells configure the supernet, not the algorithm."""
    import json

    from fastnas.cli import main

    args = [
        "search",
        "--method",
        "entrannas",
        "--dataset",
        "digits",
        "--limit",
        "32",
        "--batch-size",
        "16",
        "--C",
        "4",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
        "--run-name",
        "abl",
        "--no-feature-sharing",
        "--bottleneck",
        "0",
        "--engine-cells",
        "all",
        "--no-progress",
    ]
    assert main(args) == 0
    config = json.loads((tmp_path / "abl" / "config.json").read_text())
    recorded = config["method_options"]
    assert {k: recorded[k] for k in ("feature_sharing", "bottleneck", "engine_cells")} == {
        "feature_sharing": False,
        "bottleneck": 0,
        "engine_cells": "all",
    }
    assert recorded["tau0"] == 5.0  # every option is recorded, the defaults included
    model = SearchModel.build("entrannas", C=4, layers=3, **recorded)
    cells = list(model.supernet.cells)
    assert all(cell.engine for cell in cells)
    assert not any(cell.feature_sharing for cell in cells) and not any(cell.bottleneck for cell in cells)
    default = SearchModel.build("entrannas", C=4, layers=3)
    assert [c.engine for c in default.supernet.cells] == [True, True, False]
    assert all(c.feature_sharing and c.bottleneck == 4 for c in default.supernet.cells)


# ------------------------------------------------------------------------- partial channels (PC-DARTS)


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize(("k", "bypass"), [(2, "max"), (4, "avg")])
def test_an_unshared_engine_cell_with_partial_channels_is_the_darts_partial_cell(
    reduction: bool, k: int, bypass: str
) -> None:
    """Without sharing and bottleneck, an Engine-cell computes the DARTS search cell; with partial
    channels too (same ops on the first C/K channels, same bypass, same shuffle), outputs and gradients."""
    from fastnas.nn import PartialChannels
    from fastnas.nn.cell import SearchCell

    partial = PartialChannels(k, bypass)
    plan = CellPlan.standalone(16, 16, 16, reduction, False)
    torch.manual_seed(0)
    engine = EnTranCell(SPACE, plan, engine=True, feature_sharing=False, bottleneck=0, partial=partial)
    darts = SearchCell(SPACE, plan, partial=partial)
    _randomise(engine)
    state = {}
    for name, value in engine.state_dict().items():
        parts = name.split(".")
        if parts[0] == "ops":  # ops.<edge>.<op>.* -> edges.<edge>.ops.<op>.*
            name = ".".join(["edges", parts[1], "ops", *parts[2:]])
        state[name] = value
    darts.load_state_dict(state)
    weights = torch.rand(SPACE.num_edges, SPACE.num_ops).requires_grad_()
    s0, s1 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    outs, grads = [], []
    for cell in (engine, darts):
        out = cell(s0, s1, weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(weights.grad.clone())
        weights.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_partial_channels_reach_the_entrannas_supernet_and_bad_sizes_are_clear_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = SearchModel.build("entrannas", C=16, layers=3, partial_k=2)
    cells = list(model.supernet.cells)
    assert all(c.partial.k == 2 and c.head_channels == c.op_channels // 2 for c in cells)
    model(torch.randn(2, 3, 16, 16)).sum().backward()  # Engine and Transit cells both run
    assert main(["search", "--method", "entrannas", "--partial-k", "4", "--C", "16", "--no-progress",
                 "--dataset", "digits", "--epochs", "1"]) == 2  # fmt: skip
    assert "must split into 4 parts of an even size" in capsys.readouterr().err
