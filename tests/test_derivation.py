"""The DARTS derivation rule on hand-set edge weights (REFERENCE.md section 1)."""

from __future__ import annotations

import pytest
import torch

from fastnas import DartsSpace, Genotype, SearchModel
from fastnas.algorithms import derive_darts_cell
from fastnas.algorithms.derivation import arch_cosine_distance
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
    """Seed 004 section 3.5: per edge the group (none / skip / pool / conv) with the highest summed weight
    wins and its best op takes that sum; then the DARTS rule. Expected cells worked out by hand."""
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


# ------------------------------------------------------------------ cosine distance (seed 001 B.5)


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
