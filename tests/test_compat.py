"""``fastnas.compat.darts.Network``: a DARTS-era script's model, driven only through the interface the
DARTS code calls (``_loss``, ``new``, ``arch_parameters``, ``state_dict`` / ``named_parameters``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastnas.algorithms.architect import unrolled_arch_gradients
from fastnas.compat.darts import Network
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.ops import DARTS_OPS

pytestmark = __import__("pytest").mark.usefixtures("one_torch_thread")


def tiny(**kwargs: object) -> Network:
    torch.manual_seed(0)
    return Network(4, 10, 3, nn.CrossEntropyLoss(), **kwargs).double()  # type: ignore[arg-type]


def batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def darts_way_alpha_gradients(
    model: Network, train: tuple, valid: tuple, eta: float, optimizer: torch.optim.SGD
) -> list[torch.Tensor]:
    """The second-order architect as DARTS-era code writes it, from DARTS Eq. 7-8: a virtual SGD step
    into a ``new()`` model loaded through ``state_dict`` + ``named_parameters``, then the finite-difference
    Hessian-vector product with the weights shifted in place by +-eps v, eps = 0.01 / ||v||."""
    group = optimizer.param_groups[0]
    weights = list(model.parameters())
    loss = model._loss(*train)
    grads = torch.autograd.grad(loss, weights)
    theta = flat([w.detach() for w in weights])
    moment = flat([optimizer.state[w]["momentum_buffer"] for w in weights]) * group["momentum"]
    step = theta - eta * (moment + flat(list(grads)) + group["weight_decay"] * theta)
    virtual = model.new()
    state, offset = model.state_dict(), 0
    for name, w in model.named_parameters():
        state[name] = step[offset : offset + w.numel()].view_as(w)
        offset += w.numel()
    virtual.load_state_dict(state)
    virtual._loss(*valid).backward()
    d_alpha = [a.grad.clone() for a in virtual.arch_parameters()]
    v = [w.grad.clone() for w in virtual.parameters()]
    eps = 0.01 / flat(v).norm()
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.add_(eps * g)
    g_plus = torch.autograd.grad(model._loss(*train), model.arch_parameters())
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.sub_(2 * eps * g)
    g_minus = torch.autograd.grad(model._loss(*train), model.arch_parameters())
    with torch.no_grad():
        for w, g in zip(weights, v):
            w.add_(eps * g)
    return [d - eta * (p - m) / (2 * eps) for d, p, m in zip(d_alpha, g_plus, g_minus)]


def test_a_darts_style_second_order_architect_gets_fastnas_alpha_gradients() -> None:
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    model._loss(*batch(1)).backward()  # one real step: every weight has a momentum buffer
    optimizer.step()
    optimizer.zero_grad()
    train, valid, eta = batch(2), batch(3), 0.025
    ours, _ = unrolled_arch_gradients(model.search, train, valid, eta, optimizer)
    theirs = darts_way_alpha_gradients(model, train, valid, eta, optimizer)
    assert len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.abs().max() > 1e-6  # a real gradient
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def darts_genotype_rule(alphas: torch.Tensor, steps: int = 4) -> list[tuple[str, int]]:
    """REFERENCE.md section 1: per node, the 2 incoming edges with the largest non-``none`` softmax
    weight, each with its best non-``none`` op."""
    weights, none = torch.softmax(alphas, dim=-1), DARTS_OPS.index("none")
    gene, start = [], 0
    for node in range(steps):
        rows = weights[start : start + node + 2]
        best = [max((float(w), k) for k, w in enumerate(row) if k != none) for row in rows]
        kept = sorted(range(node + 2), key=lambda j: -best[j][0])[:2]
        gene += [(DARTS_OPS[best[j][1]], j) for j in kept]
        start += node + 2
    return gene


def test_the_published_rule_on_alphas_normal_and_reduce_gives_genotype() -> None:
    model = tiny()
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            for alpha in model.arch_parameters():
                alpha.copy_(torch.randn_like(alpha))
        genotype = model.genotype()
        assert isinstance(genotype, Genotype)
        normal = sorted(darts_genotype_rule(model.alphas_normal.detach()))
        reduce = sorted(darts_genotype_rule(model.alphas_reduce.detach()))
        assert sorted((op, j) for op, j in genotype.normal) == normal
        assert sorted((op, j) for op, j in genotype.reduce) == reduce


def test_parameters_are_the_weights_only_as_in_darts() -> None:
    model = Network(16, 10, 8, nn.CrossEntropyLoss())
    assert sum(p.numel() for p in model.parameters()) == 1_930_618  # REFERENCE.md: alphas not counted
    ids = {id(p) for p in model.parameters()}
    assert not ids & {id(a) for a in model.arch_parameters()}
    assert model._arch_parameters == [model.alphas_normal, model.alphas_reduce]
    assert model.alphas_normal.shape == (14, 8)
    names = [n for n, _ in model.named_parameters()]
    assert names[0].startswith("stem.") and names[-1].startswith("classifier.")
    assert all(n.split(".")[0] in ("stem", "cells", "classifier") for n in names)


def test_sgd_over_parameters_leaves_the_alphas_alone() -> None:
    model = tiny()
    before = [a.detach().clone() for a in model.arch_parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    for seed in range(2):
        optimizer.zero_grad()
        model._loss(*batch(seed)).backward()
        optimizer.step()
    assert all(a.grad is not None for a in model.arch_parameters())  # the loss reaches them...
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))  # ...SGD does not


def test_new_copies_the_architecture_and_state_dict_round_trips() -> None:
    model = tiny()
    with torch.no_grad():
        model.alphas_normal.normal_()
    other = model.new()
    assert torch.equal(other.alphas_normal, model.alphas_normal)
    assert other.alphas_normal is not model.alphas_normal
    assert next(other.parameters()).dtype == torch.float64
    other.load_state_dict(model.state_dict())
    x, _ = batch(4)
    model.eval()
    other.eval()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert {"alphas_normal", "alphas_reduce"} <= set(model.state_dict())


def test_method_and_executor_are_keyword_arguments() -> None:
    pc = tiny(method="pc-darts")
    assert len(pc.arch_parameters()) == 4  # alphas, then PC-DARTS' edge-normalisation betas
    assert pc.arch_parameters()[2].shape == (14,)
    assert {"betas_normal", "betas_reduce"} <= set(pc.state_dict())
    reference, fast = tiny(), tiny(executor="fast")
    fast.load_state_dict(reference.state_dict())
    x, _ = batch(5)
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-9, atol=1e-10)
    second = tiny(order=2)
    assert second.search.algorithm.order == 2


def test_pdarts_own_network_arguments_get_a_clear_error() -> None:
    """P-DARTS' ``Network(..., switches_normal, switches_reduce, p)`` is not covered: say so and where to
    go instead, rather than fail inside the supernet build."""
    switches = [[True] * 8 for _ in range(14)]
    with pytest.raises(ConfigError, match=r"switches_normal, switches_reduce.*--method pdarts"):
        Network(4, 10, 2, nn.CrossEntropyLoss(), switches_normal=switches, switches_reduce=switches)
