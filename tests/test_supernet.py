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


def _independent_forward(net: Supernet, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The supernet forward written out from REFERENCE.md section 1, with every candidate op module run
    directly (``edge.ops[k]``): no MixedEdge.forward, no executor, no forward_cells."""
    space = net.space
    s = net.stem(x)
    s0, s1 = s, s
    for cell, cell_type in zip(net.cells, net.cell_types, strict=True):
        w = weights[cell_type]
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for node in range(space.num_nodes):
            total = 0
            for e in space.edges:
                if e.node != node:
                    continue
                edge = cell.edges[e.index]
                for k in range(space.num_ops):  # `none` included: it adds w_none * 0
                    total = total + w[e.index, k] * edge.ops[k](states[e.source])
            states.append(total)
        s0, s1 = s1, torch.cat(states[-space.multiplier :], dim=1)
    return net.classifier(s1.mean(dim=(2, 3)))


@pytest.mark.parametrize("training", [True, False])
def test_supernet_forward_equals_an_independent_computation(training: bool) -> None:
    torch.manual_seed(2)
    model = SearchModel.build("darts", C=4, layers=5)
    net = model.supernet.train(training)
    assert "reduce" in net.cell_types and net.space.ops[0] == "none"
    if not training:  # running statistics that are not the (0, 1) defaults
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    weights = {t: torch.softmax(torch.randn(14, 8), dim=-1) for t in ("normal", "reduce")}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = _independent_forward(net, x, weights)
        got = net(x, weights)
        # both cell types matter: swapping their weights changes the output
        swapped = net(x, {"normal": weights["reduce"], "reduce": weights["normal"]})
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(swapped, expected, rtol=1e-3, atol=1e-4)
    for name in ("reference", "fast"):
        net.set_executor(name)
        with torch.no_grad():
            torch.testing.assert_close(net(x, weights), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown cell executor"):
        model.supernet.set_executor("warp-speed")
