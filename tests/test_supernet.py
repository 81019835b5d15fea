"""The DARTS search supernet: structure and parameter counts of REFERENCE.md section 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastnas import DartsSpace, SearchModel, Supernet
from fastnas.nn import MixedEdge, reduction_layers


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("layers", "expected"), [(8, 1_930_618), (5, 1_275_834)])
def test_parameter_count_matches_darts(layers: int, expected: int) -> None:
    assert _count(Supernet(C=16, layers=layers, num_classes=10)) == expected


def test_alphas_are_not_supernet_parameters_and_have_darts_shape_and_scale() -> None:
    torch.manual_seed(0)
    model = SearchModel.build("darts", C=4, layers=5)
    assert _count(model.supernet) == sum(p.numel() for p in model.weight_parameters())
    alphas = dict(model.algorithm.alphas.items())
    assert set(alphas) == {"normal", "reduce"}
    for alpha in alphas.values():
        assert alpha.shape == (14, 8)
        assert 0.5e-3 < float(alpha.detach().std()) < 2e-3  # 1e-3 * randn
    assert not set(map(id, model.arch_parameters())) & set(map(id, model.weight_parameters()))


def test_cell_structure() -> None:
    net = Supernet(C=8, layers=8)
    assert reduction_layers(8) == (2, 5)
    assert [c.reduction for c in net.cells] == [i in (2, 5) for i in range(8)]
    assert net.cell_types == ["normal", "normal", "reduce", "normal", "normal", "reduce", "normal", "normal"]
    cell = net.cells[2]
    strides = [edge.ops[4][0][1].stride[0] for edge in cell.edges]  # first depthwise conv of sep_conv_3x3
    # edges leaving the two cell inputs are strided in a reduction cell: sources 0 and 1 of each node
    sources = [e.source for e in net.space.edges]
    assert strides == [2 if s < 2 else 1 for s in sources]
    for module in net.cells.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert not module.affine
    edge = cell.edges[0]
    assert isinstance(edge, MixedEdge)
    pool = edge.ops[1]
    assert isinstance(pool[0], nn.MaxPool2d) and isinstance(pool[1], nn.BatchNorm2d)


def test_forward_shapes_and_mixed_op_is_weighted_sum() -> None:
    torch.manual_seed(1)
    model = SearchModel.build("darts", C=4, layers=5)
    x = torch.randn(3, 3, 16, 16)
    assert model(x).shape == (3, 10)
    edge = model.supernet.cells[0].edges[3]
    h = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(8), 0)
    expected = sum(w[k] * edge.ops[k](h) for k in range(8))
    assert torch.allclose(edge(h, w), expected, atol=1e-5)


def test_space_options() -> None:
    space = DartsSpace(num_nodes=3, multiplier=3)
    assert space.num_edges == 2 + 3 + 4
    net = Supernet(space, C=4, layers=5)
    assert len(net.cells[0].edges) == 9
    three = DartsSpace(num_normal_types=3)
    assert three.cell_types == ("normal", "normal_2", "normal_3", "reduce")
    net3 = Supernet(three, C=4, layers=5)
    assert net3.cell_types == ["normal", "reduce", "normal_2", "reduce", "normal_3"]
    without = DartsSpace().without_ops(["none", "skip_connect"])
    assert without.ops == (
        "max_pool_3x3",
        "avg_pool_3x3",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    with pytest.raises(ValueError, match="unknown op"):
        DartsSpace(ops=("none", "conv_9x9"))
    with pytest.raises(ValueError, match="multiplier"):
        DartsSpace(num_nodes=2, multiplier=4)


def test_executor_switch_keeps_outputs() -> None:
    torch.manual_seed(2)
    model = SearchModel.build("darts", C=4, layers=5)
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    model.supernet.set_executor("reference")
    assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="unknown cell executor"):
        model.supernet.set_executor("warp-speed")
