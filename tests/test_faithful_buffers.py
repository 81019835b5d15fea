"""Issue 17: BatchNorm running statistics in the second-order step follow the DARTS code (or stay frozen
on request), and ``SearchModel.parameters()`` are the weights only, as in DARTS."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_search

from fastnas import SearchModel, run_search
from fastnas.algorithms.architect import unrolled_arch_gradients
from fastnas.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(**options: object) -> SearchModel:
    torch.manual_seed(0)
    return SearchModel.build("darts", C=4, layers=3, num_classes=10, order=2, **options).double()  # type: ignore[arg-type]


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)


def running_stats(model: SearchModel) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.supernet.named_buffers() if "running" in n or "num_batches" in n}


def darts_code_architect_bn(model: SearchModel, train: tuple, valid: tuple, eta: float, wd: float) -> None:
    """What the DARTS code's second-order step does to the model's BN buffers: a training-mode forward of
    the model itself at w (for the virtual step), the unrolled forward on a copy (discarded), then the
    model itself at w + eps v and w - eps v (the Hessian-vector product), weights shifted in place."""
    weights = model.weight_parameters()
    grads = torch.autograd.grad(model.loss(*train), weights)
    virtual = copy.deepcopy(model)  # a new model, its buffers copied from this one's state
    with torch.no_grad():
        for w_virtual, w, g in zip(virtual.weight_parameters(), weights, grads):
            w_virtual.copy_(w - eta * (g + wd * w))
    v = torch.autograd.grad(virtual.loss(*valid, level="arch"), virtual.weight_parameters())
    eps = 0.01 / torch.cat([g.reshape(-1) for g in v]).norm()
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.add_(eps * g)
    model.loss(*train)
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.sub_(2 * eps * g)
    model.loss(*train)
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.add_(eps * g)


def test_the_second_order_step_updates_bn_statistics_as_the_darts_code() -> None:
    model = tiny_model()
    original = copy.deepcopy(model)
    hand = copy.deepcopy(model)
    train, valid, eta, wd = batch(1), batch(2), 0.025, 3e-4
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=eta, momentum=0.9, weight_decay=wd)
    unrolled_arch_gradients(model, train, valid, eta, optimizer)  # update_bn=True: the default
    darts_code_architect_bn(hand, train, valid, eta, wd)
    ours, theirs, before = running_stats(model), running_stats(hand), running_stats(original)
    assert set(ours) == set(theirs) and any("running_mean" in n for n in ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-10, atol=1e-12)
    changed = [n for n in ours if "running_var" in n and not torch.allclose(ours[n], before[n])]
    assert changed  # the statistics really moved
    assert all(int(ours[n]) == int(before[n]) + 3 for n in ours if "num_batches" in n)  # w, w+, w-
    x, _ = batch(3)
    model.eval()
    hand.eval()
    torch.testing.assert_close(model(x), hand(x), rtol=1e-10, atol=1e-12)


def test_frozen_keeps_the_statistics_and_the_gradients_do_not_depend_on_it() -> None:
    model, frozen = tiny_model(), tiny_model(arch_step_bn="frozen")
    frozen.load_state_dict(model.state_dict())
    before = running_stats(frozen)
    train, valid = batch(1), batch(2)
    updated_grads, _ = unrolled_arch_gradients(
        model, train, valid, 0.025, torch.optim.SGD(model.weight_parameters(), lr=0.025)
    )
    frozen_grads, _ = unrolled_arch_gradients(
        frozen, train, valid, 0.025, torch.optim.SGD(frozen.weight_parameters(), lr=0.025), update_bn=False
    )
    assert all(torch.equal(before[n], b) for n, b in running_stats(frozen).items())
    assert not all(torch.equal(before[n], b) for n, b in running_stats(model).items())
    for a, b in zip(updated_grads, frozen_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_arch_step_bn_is_a_second_order_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--order 2"):
        SearchModel.build("darts", C=4, layers=3, arch_step_bn="frozen")
    config = tiny_search(tmp_path, "darts", epochs=1, method_options={"order": 2, "arch_step_bn": "frozen"})
    result = run_search(config, progress=False)
    assert result.model.algorithm.arch_step_bn == "frozen"


def test_parameters_are_the_weights_and_the_alphas_come_from_arch_parameters() -> None:
    model = SearchModel.build("darts")
    assert sum(p.numel() for p in model.parameters()) == 1_930_618  # REFERENCE.md: C=16, 8 layers
    alphas = {id(a) for a in model.arch_parameters()}
    assert alphas and not alphas & {id(p) for p in model.parameters()}
    assert next(n for n, _ in model.named_parameters()).startswith("supernet.")
    every = dict(model.named_parameters_with_alphas())
    assert {"algorithm.alphas.normal", "algorithm.alphas.reduce"} <= set(every)
    assert {"algorithm.alphas.normal", "algorithm.alphas.reduce"} <= set(model.state_dict())  # saved


def test_a_darts_era_sgd_over_parameters_leaves_the_alphas_alone() -> None:
    model = tiny_model()
    before = [a.detach().clone() for a in model.arch_parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for seed in range(3):
        optimizer.zero_grad()
        model.loss(*batch(seed)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    assert all(a.grad is not None for a in model.arch_parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))
