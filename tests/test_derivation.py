"""Derivation rules on hand-set edge weights: the DARTS rule (Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019, section 2.4), discretisation by grouping (Paganucci, "Efficient ConvNet
Architectures: Differentiable Neural Architecture Search", semester thesis, ETH Zurich, 2020, section 3.5)
and the cosine distance of DDSAS (Yang et al., "DDSAS: Dynamic and Differentiable Space-Architecture
Search", ACML 2021, appendix B.5)."""

from __future__ import annotations

import pytest
import torch

from fastnas import DartsSpace, Genotype, SearchModel
from fastnas.algorithms import derive_darts_cell
from fastnas.algorithms.derivation import arch_cosine_distance, grouped_weights
from fastnas.genotype import get_zoo_genotype
from fastnas.nb201.arch import NB201Arch
from fastnas.spaces.nb201 import NB201_OPS

SPACE = DartsSpace()
OPS = list(SPACE.ops)


def _weights(strong: dict[int, tuple[str, float]], none_edges: tuple[int, ...] = ()) -> torch.Tensor:
    """Uniform small weights; ``strong[edge] = (op, value)`` raises one op; ``none`` large on none_edges."""
    w = torch.full((14, 8), 0.01)
    for edge, (op, value) in strong.items():
        w[edge, OPS.index(op)] = value
    for edge in none_edges:
        w[edge, OPS.index("none")] = 0.99  # must be ignored when ranking and choosing
    return w


def test_hand_set_weights_give_expected_cell() -> None:
    # Edge numbering: node 0 <- {0, 1} = edges 0-1; node 1 <- {0, 1, 2} = 2-4; node 2 <- 0..3 = 5-8;
    # node 3 <- 0..4 = 9-13.
    strong = {
        0: ("sep_conv_3x3", 0.5),
        1: ("skip_connect", 0.6),
        3: ("dil_conv_5x5", 0.3),
        4: ("max_pool_3x3", 0.7),
        5: ("avg_pool_3x3", 0.2),
        8: ("sep_conv_5x5", 0.9),
        7: ("dil_conv_3x3", 0.4),
        13: ("sep_conv_3x3", 0.8),
        10: ("skip_connect", 0.75),
    }
    cell = derive_darts_cell(_weights(strong, none_edges=(2, 6, 9)), SPACE)
    assert cell.nodes == (
        (("skip_connect", 1), ("sep_conv_3x3", 0)),
        (("max_pool_3x3", 2), ("dil_conv_5x5", 1)),
        (("sep_conv_5x5", 3), ("dil_conv_3x3", 2)),
        (("sep_conv_3x3", 4), ("skip_connect", 1)),
    )
    assert cell.concat == (2, 3, 4, 5)


def test_none_never_selected_even_when_dominant() -> None:
    w = torch.full((14, 8), 0.001)
    w[:, 0] = 10.0
    w[:, OPS.index("avg_pool_3x3")] = 0.01
    cell = derive_darts_cell(w, SPACE)
    assert all(op == "avg_pool_3x3" for node in cell.nodes for op, _ in node)
    # all edges tie: the lower input indices win, as in the DARTS code's stable sort
    assert [sorted(i for _, i in node) for node in cell.nodes] == [[0, 1]] * 4


def test_model_genotype_uses_softmax_of_alphas() -> None:
    torch.manual_seed(0)
    model = SearchModel.build("darts", C=4, layers=5)
    with torch.no_grad():
        for alpha in model.algorithm.alphas.values():
            alpha.zero_()
        model.algorithm.alphas["normal"][:, OPS.index("sep_conv_3x3")] = 3.0
        model.algorithm.alphas["reduce"][:, OPS.index("max_pool_3x3")] = 3.0
        # node 3: input 4 strongest
        model.algorithm.alphas["normal"][13, OPS.index("dil_conv_3x3")] = 5.0
    g = model.genotype()
    assert isinstance(g, Genotype)
    assert g.normal[6:] == [("dil_conv_3x3", 4), ("sep_conv_3x3", 0)]
    assert {op for op, _ in g.reduce} == {"max_pool_3x3"}
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]


def test_grouping_discretisation_on_hand_set_weights() -> None:
    """Paganucci 2020, section 3.5: per edge the group (none / skip / pool / conv) with the highest summed
    weight wins and its best op takes that sum; then the DARTS rule. Expected cells worked out by hand."""
    w = torch.full((14, 8), 0.01)
    #            none  max   avg   skip  sep3  sep5  dil3  dil5
    w[0] = torch.tensor([0.0, 0.35, 0.0, 0.10, 0.20, 0.20, 0.15, 0.0])  # conv group 0.55 beats max 0.35
    w[1] = torch.tensor([0.0, 0.0, 0.0, 0.50, 0.10, 0.10, 0.10, 0.10])  # skip 0.50 beats conv 0.40
    w[2] = torch.tensor([0.0, 0.30, 0.30, 0.0, 0.0, 0.0, 0.0, 0.0])  # pool group 0.60
    w[3] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.45, 0.0, 0.0, 0.0])
    w[4] = torch.tensor([0.90, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.50])  # the none group wins: strength 0
    darts = derive_darts_cell(w, SPACE)
    grouped = derive_darts_cell(w, SPACE, rule="grouping")
    assert darts.nodes[0] == (("skip_connect", 1), ("max_pool_3x3", 0))
    assert grouped.nodes[0] == (("sep_conv_3x3", 0), ("skip_connect", 1))
    assert darts.nodes[1] == (("dil_conv_5x5", 2), ("sep_conv_3x3", 1))
    assert grouped.nodes[1] == (("max_pool_3x3", 0), ("sep_conv_3x3", 1))


def test_grouping_reaches_the_methods(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastnas import SearchConfig
    from fastnas.errors import ConfigError

    for method in ("darts", "pdarts", "entrannas"):
        config = SearchConfig(method=method, dataset="digits", method_options={"derive": "grouping"})
        assert config.resolved().options.derive == "grouping"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="does not apply to entrannas-dst"):
        SearchConfig(
            method="entrannas-dst", dataset="digits", method_options={"derive": "grouping"}
        ).resolved()
    model = SearchModel.build("entrannas", C=4, layers=3, num_classes=3, derive="grouping")
    assert model.supernet.derive_rule == "grouping"  # the Transit-cells derive as the genotype does


def _grouped_by_name(weights: torch.Tensor, space: DartsSpace) -> list[dict[str, float]]:
    """Per edge, ``{op name: grouped weight}`` of the non-zero entries (independent of column order)."""
    out = grouped_weights(weights, space)
    return [{space.ops[k]: float(v) for k, v in enumerate(row) if v != 0} for row in out]


#                       none  max   avg   skip  sep3  sep5  dil3  dil5
TIES = torch.tensor(
    [
        [0.0, 0.35, 0.25, 0.0, 0.1, 0.2, 0.3, 0.0],  # pool 0.6 == conv 0.6 (exactly): pool, max_pool
        [0.0, 0.0, 0.0, 0.4, 0.2, 0.0, 0.0, 0.2],  # skip 0.4 == conv 0.4: skip
        [0.5, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0],  # none 0.5 == pool 0.5: none
        [0.0, 0.1, 0.0, 0.0, 0.25, 0.25, 0.25, 0.0],  # conv 0.75 wins; its ops tie: sep_conv_3x3
    ],
    dtype=torch.float64,
)
TIES_EXPECTED = [  # worked out by hand from the documented tie rules of grouped_weights
    {"max_pool_3x3": 0.6},
    {"skip_connect": 0.4},
    {"none": 0.5},
    {"sep_conv_3x3": 0.75},
]


def test_grouping_breaks_exact_ties_by_the_documented_rules() -> None:
    """Paganucci 2020, section 3.5 leaves ties open; fastnas fixes them: exact-rounded group sums, equal
    sums -> the group first in (none, skip, pool, conv), equal op weights in the group -> lowest index."""
    w = torch.zeros(14, 8, dtype=torch.float64)
    w[: len(TIES)] = TIES
    w[len(TIES) :, OPS.index("sep_conv_5x5")] = 1.0
    got = _grouped_by_name(w, SPACE)
    assert got[: len(TIES)] == TIES_EXPECTED
    assert got == _grouped_by_name(w, SPACE)  # stable across calls
    # the conv sum 0.1 + 0.2 + 0.3 rounds above 0.6 when added left to right, exactly 0.6 when added
    # right to left: whichever column holds which value, the group sum ties with pool's 0.6
    for conv in ([0.1, 0.2, 0.3, 0.0], [0.3, 0.2, 0.1, 0.0], [0.0, 0.2, 0.1, 0.3], [0.1, 0.0, 0.3, 0.2]):
        w[0, 4:] = torch.tensor(conv, dtype=torch.float64)
        assert _grouped_by_name(w, SPACE)[0] == {"max_pool_3x3": 0.6}, conv


def test_grouping_does_not_depend_on_the_order_the_ops_are_listed() -> None:
    """The same weights under the reversed op list give the same grouped weights per op name (no op ties
    inside a winning group here: those go to the lowest column, by design)."""
    w = torch.zeros(14, 8, dtype=torch.float64)
    w[:3] = TIES[:3]
    w[3:, OPS.index("dil_conv_3x3")] = 0.7
    w[3:, OPS.index("skip_connect")] = 0.3
    reversed_space = DartsSpace(ops=tuple(reversed(SPACE.ops)))
    assert _grouped_by_name(w.flip(1), reversed_space) == _grouped_by_name(w, SPACE)
    assert _grouped_by_name(w, SPACE)[:3] == TIES_EXPECTED[:3]


# ------------------------------------------------------------------ cosine distance (DDSAS, appendix B.5)


def _one_hot_vector(arch: NB201Arch) -> torch.Tensor:
    """The flattened ``[edges, ops]`` one-hot matrix of an NB201 cell, built independently."""
    matrix = torch.zeros(len(arch.ops), len(NB201_OPS))
    for edge, op in enumerate(arch.ops):
        matrix[edge, NB201_OPS.index(op)] = 1
    return matrix.flatten()


def test_arch_cosine_distance_follows_appendix_b5() -> None:
    first = NB201Arch(("nor_conv_3x3",) * 3 + ("skip_connect",) * 3)
    second = NB201Arch(("nor_conv_3x3",) * 3 + ("avg_pool_3x3",) * 3)
    # half the edges agree, as in the appendix's two-edge example: 1 - 1 / (sqrt(2) sqrt(2)) = 0.5
    assert arch_cosine_distance(first, second) == pytest.approx(0.5)
    assert arch_cosine_distance(first, first) == 0.0
    assert arch_cosine_distance(first, NB201Arch(("none",) * 6)) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = (
            NB201Arch(tuple(NB201_OPS[int(i)] for i in torch.randint(5, (6,), generator=g))) for _ in "ab"
        )
        va, vb = _one_hot_vector(a), _one_hot_vector(b)
        expected = 1 - float(torch.nn.functional.cosine_similarity(va, vb, dim=0))
        assert arch_cosine_distance(a, b) == pytest.approx(expected, abs=1e-6)


def test_arch_cosine_distance_of_genotypes_counts_shared_edge_choices() -> None:
    v1, v2 = get_zoo_genotype("DARTS_V1"), get_zoo_genotype("DARTS_V2")
    shared = sum(  # the same op from the same input into the same node of the same cell
        len(set(n1) & set(n2))
        for (_, c1), (_, c2) in zip(v1.cells, v2.cells, strict=True)
        for n1, n2 in zip(c1.nodes, c2.nodes, strict=True)
    )
    total = sum(len(c.pairs) for _, c in v1.cells)
    assert 0 < shared < total  # the two published cells share some but not all choices
    assert arch_cosine_distance(v1, v2) == pytest.approx(1 - shared / total)
    assert arch_cosine_distance(v2, v2) == 0.0


def test_a_derived_cell_with_a_short_concat_may_leave_nodes_unread() -> None:
    """With multiplier < nodes the DARTS rule may pick no edge out of an early node: a faithful result, so
    the derived genotype opts in to dangling nodes (it would otherwise be refused) and round-trips."""
    from fastnas.algorithms import DARTS

    space = DartsSpace(num_nodes=4, multiplier=2)
    dangling = 0
    for seed in range(20):
        torch.manual_seed(seed)
        genotype = DARTS(space, init_scale=1.0).derive()
        assert isinstance(genotype, Genotype)
        dangling += bool(genotype.allow_dangling)
        assert Genotype.parse(genotype.to_literal()) == genotype
    assert dangling > 0  # the case really occurs
