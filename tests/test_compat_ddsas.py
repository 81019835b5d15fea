"""``fastnas.compat.ddsas.Network``: the public DDSAS code's ``model_search.Network`` (Yang et al., "DDSAS:
Dynamic and Differentiable Space-Architecture Search", ACML 2021), driven only through the calls its
``train_search.py`` makes, against fastnas's own DDSAS search."""

from __future__ import annotations

import pytest
import torch
from test_compat import batch
from torch import nn

from fastnas import SearchModel
from fastnas.algorithms import DDSAS
from fastnas.algorithms.ddsas import shrink_available
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.compat import darts, ddsas
from fastnas.compat._base import WrongNetworkError
from fastnas.spaces import DartsSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPAND = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3", "avg_pool_3x3",
          "sep_conv_5x5", "dil_conv_5x5"]  # fmt: skip


def tiny(**kwargs: object) -> ddsas.Network:
    torch.manual_seed(0)
    return ddsas.Network(4, 10, 3, nn.CrossEntropyLoss(), 1.44, 20, "simple", **kwargs).double()  # type: ignore[arg-type]


def script_steps(model: ddsas.Network, steps: int, freq: int) -> None:
    """The DDSAS script's loop: every ``freq`` steps update_dss + generate_dss, then the first-order
    architect step (one Adam over arch and space parameters), then the weight step."""
    arch = torch.optim.Adam(
        model.arch_parameters() + model.space_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3
    )
    weights = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    for step in range(steps):
        if step % freq == 0:
            model.update_dss()
            model.generate_dss()
        arch.zero_grad()
        model._loss(*batch(100 + step)).backward()
        arch.step()
        weights.zero_grad()
        model._loss(*batch(step)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        weights.step()


def fastnas_steps(model: SearchModel, steps: int) -> None:
    """The same iterations through fastnas's own loop calls (``start_step`` draws the subspace)."""
    alg = model.algorithm
    arch = torch.optim.Adam(list(alg.parameters()), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    weights = torch.optim.SGD(model.supernet.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    loss = nn.CrossEntropyLoss()
    for step in range(steps):
        model.start_step(0, step)
        arch.zero_grad()
        x, y = batch(100 + step)
        loss(model(x), y).backward()
        arch.step()
        weights.zero_grad()
        x, y = batch(step)
        loss(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.supernet.parameters(), 5.0)
        weights.step()


def test_the_ddsas_script_steps_search_as_fastnas_ddsas() -> None:
    compat = tiny(resample_every=3)
    script_steps(compat, 7, freq=3)
    torch.manual_seed(0)
    native = SearchModel.build("ddsas", C=4, layers=3, num_classes=10, subspace_ops=20, resample_every=3)
    native = native.double()
    fastnas_steps(native, 7)
    alg = native.algorithm
    assert isinstance(alg, DDSAS)
    for t in ("normal", "reduce"):
        torch.testing.assert_close(getattr(compat, f"alphas_{t}"), alg.alphas[t], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(getattr(compat, f"betas_{t}"), alg.betas[t], rtol=1e-12, atol=1e-14)
        assert torch.equal(getattr(compat, f"_op_mask_{t}"), alg.subspace[t])
        assert torch.equal(getattr(compat, f"_opt_steps_{t}"), alg.counts[t])
        torch.testing.assert_close(
            getattr(compat, f"_op_saliency_{t}"), alg.saliency_table[t], rtol=1e-12, atol=0
        )
    assert float(compat._total_opt_steps) == alg.total == 4  # 1 + updates at steps 0, 3, 6
    for (name, a), (_, b) in zip(compat.named_parameters(), native.supernet.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    x, _ = batch(50)
    torch.testing.assert_close(compat(x), native(x), rtol=1e-12, atol=1e-13)
    assert compat.genotype() == native.genotype()


def test_arch_and_space_parameters_are_the_ddsas_lists() -> None:
    model = tiny()
    assert [tuple(a.shape) for a in model.arch_parameters()] == [(14, 8), (14, 8)]
    assert model.arch_parameters() == [model.alphas_normal, model.alphas_reduce]
    assert model.space_parameters() == [model.betas_normal, model.betas_reduce]
    assert not {id(p) for p in model.parameters()} & {
        id(a) for a in model.arch_parameters() + model.space_parameters()
    }
    model.update_dss()
    model.generate_dss()
    model._loss(*batch(1)).backward()
    assert all(float(b.grad.abs().max()) > 0 for b in model.space_parameters())  # Eq. 13: p gets gradients
    state = model.state_dict()
    assert {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"} <= set(state)
    other = tiny()
    other.load_state_dict(state)
    assert torch.equal(other._op_mask_normal, model._op_mask_normal)  # the sampler state travels too
    clone = model.new()
    assert torch.equal(clone.betas_reduce, model.betas_reduce) and torch.equal(
        clone._ucb_normal, model._ucb_normal
    )


def test_the_space_calls_act_as_the_script_uses_them() -> None:
    model = tiny(primitives=EXPAND)  # the expand configuration reorders the ops
    assert model.search.space.ops == tuple(EXPAND)
    model.set_space(range(0, 8), False)
    model.set_space(range(0, 3), True)  # the expand script's epoch 0: the first 3 ops of its order
    assert model._op_avail_normal[:, :3].all() and not model._op_avail_normal[:, 3:].any()
    model.update_dss()
    model.generate_dss()
    assert not model._op_mask_reduce[:, 3:].any()
    model.set_space(range(0, 8), True)
    g = torch.Generator().manual_seed(3)
    alg = model.ddsas
    for t in ("normal", "reduce"):
        alg.saliency_table[t] = torch.rand(14, 8, generator=g, dtype=torch.float64)
    expected = shrink_available(alg.saliency_table["normal"], alg.available["normal"], alg.none_columns, 14)
    model.shrink_space(14)
    assert torch.equal(model._op_avail_normal, expected) and int(expected.sum()) == 112 - 14
    normal, reduce = model.op_saliency()
    torch.testing.assert_close(normal, (alg.saliency_table["normal"] * expected).float())
    space = DartsSpace(ops=tuple(EXPAND))
    assert model.genotype() == derive_space_rule(space, {"normal": normal, "reduce": reduce})
    model.set_tau(2.0)
    assert alg.tau == 2.0
    model.set_tau(None)
    assert alg.tau is None
    model.generate_random_dss()
    assert int(model._op_mask_normal[:, 1:].sum()) == 20


@pytest.mark.parametrize(
    "name", ["space_parameters", "update_dss", "generate_dss", "shrink_space", "op_saliency"]
)
def test_ddsas_calls_on_a_darts_network_point_to_the_ddsas_module(name: str) -> None:
    model = darts.Network(4, 10, 3, nn.CrossEntropyLoss())
    with pytest.raises(WrongNetworkError, match=r"fastnas\.compat\.ddsas"):
        getattr(model, name)
