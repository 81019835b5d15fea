"""DARTS second-order architecture gradient against an exact autograd computation (REFERENCE.md section 2).

The exact gradient differentiates through the virtual step w'(a) = w - xi * (grad_w L_train(w, a) + m + wd*w)
with create_graph=True; the library uses the finite-difference Hessian-vector product, whose error is
O(eps^2) with eps = 0.01 / ||v|| for a smooth loss. The gradient of a ReLU/max-pool network jumps at every
kink, and a central difference that straddles one is off by O(jump / eps), so the comparison runs on a
smooth copy of the supernet (ReLU -> SiLU, no max pooling); the library code is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastnas import DartsSpace, SearchModel
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
