"""``fastnas.compat.pcdarts.Network``: PC-DARTS' ``model_search.Network`` (Xu et al., "PC-DARTS: Partial
Channel Connections for Memory-Efficient Architecture Search", ICLR 2020), driven only through the calls
PC-DARTS' ``train_search.py`` and ``architect.py`` make."""

from __future__ import annotations

import math

import pytest
import torch
from test_compat import Architect, batch, compare_with_fastnas, darts_genotype_rule
from torch import nn

from fastnas.compat import darts, pcdarts
from fastnas.compat._base import WrongNetworkError
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")  # PC-DARTS' arch_parameters()
NODE_EDGES = [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]  # the edges into each node


def tiny(**kwargs: object) -> pcdarts.Network:
    torch.manual_seed(0)
    return pcdarts.Network(4, 10, 3, nn.CrossEntropyLoss(), **kwargs).double()  # type: ignore[arg-type]


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_the_pcdarts_script_steps_search_as_fastnas_pcdarts(unrolled: bool) -> None:
    """PC-DARTS' constructor, its architect's step (first and second order) and the weight step give
    fastnas's ``pc-darts`` search: alphas and betas, weights, BN statistics and logits."""
    compare_with_fastnas(
        lambda: pcdarts.Network(4, 10, 3, nn.CrossEntropyLoss()), "pc-darts", unrolled, NAMES
    )


def test_arch_parameters_are_pcdarts_list_and_the_network_is_pcdarts() -> None:
    model = tiny()
    arch = model.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8), (14,), (14,)]
    assert arch == [model.alphas_normal, model.alphas_reduce, model.betas_normal, model.betas_reduce]
    assert model._arch_parameters == arch
    assert all(a.abs().max() < 1e-2 for a in arch)  # 1e-3 * randn
    assert not {id(p) for p in model.parameters()} & {id(a) for a in arch}  # weights only, as in PC-DARTS
    # partial channels K = 4: every op of an edge sees a quarter of the cell's channels
    for cell, channels in zip(model.search.supernet.cells, (4, 8, 16)):
        convs = [m for edge in cell.edges for m in edge.modules() if isinstance(m, nn.Conv2d)]
        assert convs and max(c.in_channels for c in convs) == channels // 4
    # every architecture parameter reaches the loss
    model._loss(*batch(1)).backward()
    assert all(float(a.grad.abs().max()) > 0 for a in arch)


def hand_edge_weights(betas: torch.Tensor) -> torch.Tensor:
    """Per edge: ``exp(beta)`` over the sum of ``exp(beta)`` of the edges into the same node."""
    out = torch.zeros(14, dtype=torch.float64)
    for edges in NODE_EDGES:
        total = sum(math.exp(float(betas[e])) for e in edges)
        for e in edges:
            out[e] = math.exp(float(betas[e])) / total
    return out


def test_genotype_is_pcdarts_rule_edge_weight_times_op_weight() -> None:
    """PC-DARTS' derivation: the DARTS rule on ``softmax(alpha)`` times the edge's ``softmax(beta)`` weight;
    with large betas it differs from the rule on ``softmax(alpha)`` alone."""
    model = tiny()
    differs = 0
    for seed in range(6):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.arch_parameters():
                p.copy_(torch.randn_like(p) * 2)
        genotype = model.genotype()
        assert isinstance(genotype, Genotype)
        for cell, alphas, betas in (
            (genotype.normal, model.alphas_normal, model.betas_normal),
            (genotype.reduce, model.alphas_reduce, model.betas_reduce),
        ):
            op_weights = torch.softmax(alphas.detach(), -1)
            weighted = op_weights * hand_edge_weights(betas.detach()).unsqueeze(1)
            assert sorted(cell) == sorted(darts_genotype_rule(weighted))
            differs += sorted(cell) != sorted(darts_genotype_rule(op_weights))
    assert differs  # the betas matter


def test_new_and_state_dict_carry_the_betas() -> None:
    """The second-order architect's ``_construct_model_from_theta``: ``new()`` copies all four arch
    parameters, and ``state_dict()`` / ``load_state_dict()`` carry them under PC-DARTS' names."""
    model = tiny()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    other = model.new()
    assert isinstance(other, pcdarts.Network)
    assert other.search.algorithm.name == "pc-darts"
    for a, b in zip(other.arch_parameters(), model.arch_parameters()):
        assert torch.equal(a, b) and a is not b
    state = model.state_dict()
    assert set(NAMES) <= set(state)
    other.load_state_dict(state)
    model.eval()
    other.eval()
    x, _ = batch(3)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_the_darts_module_with_method_pcdarts_is_the_same_network() -> None:
    torch.manual_seed(0)
    via_darts = darts.Network(4, 10, 3, nn.CrossEntropyLoss(), method="pc-darts").double()
    model = tiny()
    x, _ = batch(2)
    torch.testing.assert_close(via_darts(x), model(x), rtol=0, atol=0)


def test_a_second_order_step_through_the_pcdarts_interface_moves_the_betas() -> None:
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    before = [b.detach().clone() for b in (model.betas_normal, model.betas_reduce)]
    Architect(model).step(*batch(1), *batch(2), 0.1, optimizer, unrolled=True)
    for b, b0 in zip((model.betas_normal, model.betas_reduce), before):
        assert (b - b0).abs().max() > 1e-3


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"builds PC-DARTS.*fastnas\.compat\.darts"):
        pcdarts.Network(4, 10, 3, nn.CrossEntropyLoss(), method="darts")
    with pytest.raises(ConfigError, match=r"fastnas\.compat\.pdarts"):
        pcdarts.Network(4, 10, 3, nn.CrossEntropyLoss(), switches_normal=[[True] * 8] * 14)
    with pytest.raises(ConfigError, match="partial-k 4 does not divide"):
        pcdarts.Network(6, 10, 3, nn.CrossEntropyLoss())
    with pytest.raises(WrongNetworkError, match=r"fastnas\.compat\.pdarts"):
        tiny().update_p()
