"""DARTS second-order architecture gradient against an exact autograd computation (REFERENCE.md section 2).

The exact gradient differentiates through the virtual step w'(a) = w - xi * (grad_w L_train(w, a) + m + wd*w)
with create_graph=True; the library uses the finite-difference Hessian-vector product, whose error is
O(eps^2) with eps = 0.01 / ||v|| for a smooth loss. The gradient of a ReLU/max-pool network jumps at every
kink, and a central difference that straddles one is off by O(jump / eps), so the comparison runs on a
smooth copy of the supernet (ReLU -> SiLU, no max pooling); the library code is the same.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastnas import DartsSpace, SearchModel
from fastnas.algorithms import architect
from fastnas.algorithms.architect import unrolled_arch_gradients


def _smooth(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.SiLU())
        else:
            _smooth(child)


def _tiny_model() -> SearchModel:
    torch.manual_seed(0)
    space = DartsSpace().without_ops(["max_pool_3x3"])
    model = SearchModel.build("darts", space=space, C=2, layers=3, num_classes=3, order=2).double()
    _smooth(model)
    with torch.no_grad():  # spread the architecture weights so the gradient is not tiny
        for alpha in model.arch_parameters():
            alpha.copy_(0.5 * torch.randn_like(alpha))
    return model


def _exact_gradient(model, train_batch, val_batch, lr, optimizer):
    names = [n for n, _ in model.supernet.named_parameters()]
    weights = [p for _, p in model.supernet.named_parameters()]
    alphas = model.arch_parameters()
    group = optimizer.param_groups[0]

    def loss(ws, batch):
        buffers = {n: b.clone() for n, b in model.supernet.named_buffers()}
        logits = functional_call(
            model.supernet, (dict(zip(names, ws)), buffers), (batch[0], model.algorithm.arch_weights())
        )
        return F.cross_entropy(logits, batch[1])

    grads = torch.autograd.grad(loss(weights, train_batch), weights, create_graph=True, allow_unused=True)
    stepped = []
    for w, g in zip(weights, grads):
        g = torch.zeros_like(w) if g is None else g
        buf = optimizer.state[w]["momentum_buffer"]
        stepped.append(w - lr * (g + group["weight_decay"] * w + group["momentum"] * buf))
    return torch.autograd.grad(loss(stepped, val_batch), alphas)


def test_second_order_gradient_matches_exact_autograd() -> None:
    model = _tiny_model()
    gen = torch.Generator().manual_seed(1)
    train = (torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = (torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([2, 1, 0, 2, 1, 0]))
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    model.loss(*train).backward()  # one real step so that the momentum buffers exist
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    lr = 0.1
    approx, _ = unrolled_arch_gradients(model, train, val, lr, optimizer)
    exact = _exact_gradient(model, train, val, lr, optimizer)
    first_order = torch.autograd.grad(model.loss(*val, level="arch"), model.arch_parameters())
    for a, e, f in zip(approx, exact, first_order):
        rel = float((a - e).norm() / e.norm())
        assert rel < 2e-3, rel
        # the second-order term is not negligible here: the test would catch its omission
        assert float((f - e).norm() / e.norm()) > 10 * rel
    # central differences: the error shrinks quadratically with the step
    finer, _ = unrolled_arch_gradients(model, train, val, lr, optimizer, fd_scale=1e-3)
    for a, b, e in zip(approx, finer, exact):
        assert float((b - e).norm()) < float((a - e).norm()) / 30


def test_finite_difference_step_is_0_01_over_the_norm_of_v(monkeypatch: pytest.MonkeyPatch) -> None:
    """REFERENCE.md section 2: w+- = w +- eps * v with eps = 0.01 / ||v||, v = grad_{w'} L_val(w', a): the
    perturbation has total norm exactly 0.01 (fd_scale) and the direction of v."""
    model = _tiny_model()
    gen = torch.Generator().manual_seed(2)
    train = (torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = (torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([2, 1, 0, 2, 1, 0]))
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    names = [n for n, _ in model.supernet.named_parameters()]
    weights = [p.detach().clone() for _, p in model.supernet.named_parameters()]

    calls: list[tuple[list[torch.Tensor], object, str]] = []
    original = architect._loss_at

    def recording(
        model_: SearchModel, names_: list[str], ws: list[torch.Tensor], batch: object, level: str, *bn: bool
    ) -> torch.Tensor:
        calls.append(([w.detach().clone() for w in ws], batch, level))
        return original(model_, names_, ws, batch, level, *bn)

    monkeypatch.setattr(architect, "_loss_at", recording)
    fd_scale = 0.01  # the DARTS value (the default)
    unrolled_arch_gradients(model, train, val, 0.1, optimizer)
    assert [(b is train, b is val, level) for _, b, level in calls] == [
        (True, False, "weights"),  # L_train(w)
        (False, True, "arch"),  # L_val(w')
        (True, False, "weights"),  # L_train(w+)
        (True, False, "weights"),  # L_train(w-)
    ]
    assert all(torch.equal(a, w) for a, w in zip(calls[0][0], weights))
    stepped, w_plus, w_minus = calls[1][0], calls[2][0], calls[3][0]
    assert not all(torch.equal(a, w) for a, w in zip(stepped, weights))  # w' is a step away from w
    # v computed here, independently, at the virtual step w'
    stepped = [w.requires_grad_(True) for w in stepped]
    buffers = {n: b.clone() for n, b in model.supernet.named_buffers()}
    logits = functional_call(
        model.supernet, (dict(zip(names, stepped)), buffers), (val[0], model.algorithm.arch_weights())
    )
    v = torch.autograd.grad(F.cross_entropy(logits, val[1]), stepped, allow_unused=True)
    v_flat = torch.cat([(torch.zeros_like(w) if g is None else g).flatten() for w, g in zip(stepped, v)])
    v_norm = float(v_flat.norm())
    assert abs(v_norm - 1.0) > 0.2, v_norm  # eps = 0.01 (without / ||v||) would be told apart
    d_plus = torch.cat([(a - w).flatten() for a, w in zip(w_plus, weights)])
    d_minus = torch.cat([(a - w).flatten() for a, w in zip(w_minus, weights)])
    assert float(d_plus.norm()) == pytest.approx(fd_scale, rel=1e-6)
    assert float(d_minus.norm()) == pytest.approx(fd_scale, rel=1e-6)
    torch.testing.assert_close(d_minus, -d_plus, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(d_plus, fd_scale * v_flat / v_norm, rtol=1e-5, atol=1e-12)
