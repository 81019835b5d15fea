"""Architecture updates: first order, and DARTS second order (Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019).

Second order (Liu et al., 2019, Eq. 6-8): with the weight learning rate ``xi``,
``w' = w - xi * (grad_w L_train(w, a) + momentum * buf + wd * w)`` (the SGD step the weight optimizer
would take), and the architecture gradient is
``grad_a L_val(w', a) - xi * grad^2_{a,w} L_train(w, a) . v`` with ``v = grad_{w'} L_val(w', a)``; the
Hessian-vector product is the central finite difference
``(grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)``, ``w+- = w +- eps v``, ``eps = 0.01 / ||v||``.
Virtual forward passes run through ``torch.func.functional_call``; by default the passes at ``w``, ``w+`` and
``w-`` update the BN running statistics as the DARTS code's do (``--arch-step-bn frozen``: none does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["BilevelModel", "first_order_arch_gradients", "unrolled_arch_gradients"]

Batch = tuple[torch.Tensor, torch.Tensor]


class _Algorithm(Protocol):
    def arch_weights(self) -> dict[str, torch.Tensor]: ...

    def active_set(self) -> dict[str, torch.Tensor] | None: ...


class BilevelModel(Protocol):
    """What the architecture step needs of a model (:class:`fastnas.SearchModel` is one): the supernet
    (the weights), the algorithm (the edge weights), the architecture parameters and the loss."""

    @property
    def supernet(self) -> nn.Module: ...

    @property
    def algorithm(self) -> _Algorithm: ...

    def arch_parameters(self) -> list[nn.Parameter]: ...

    def criterion(
        self, logits: torch.Tensor, target: torch.Tensor, level: str = "weights"
    ) -> torch.Tensor: ...

    def loss(self, x: torch.Tensor, target: torch.Tensor, level: str = "weights") -> torch.Tensor: ...


def _sgd_virtual_step(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr: float,
) -> list[torch.Tensor]:
    """``w - lr * (g + momentum * buf + wd * w)`` for every weight, as the DARTS virtual step."""
    group = optimizer.param_groups[0]
    momentum, weight_decay = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
    # the same elementwise operations as the per-weight loop (same roundings), as a few foreach launches
    direction = list(torch._foreach_add(torch._foreach_mul(list(weights), weight_decay), list(grads)))
    buffers = [optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
    with_buffer = [i for i, buf in enumerate(buffers) if buf is not None] if momentum else []
    if with_buffer:
        pushed = torch._foreach_add(
            [direction[i] for i in with_buffer],
            torch._foreach_mul([cast(torch.Tensor, buffers[i]) for i in with_buffer], momentum),
        )
        for i, d in zip(with_buffer, pushed, strict=True):
            direction[i] = d
    return list(torch._foreach_sub(list(weights), torch._foreach_mul(direction, lr)))


def _loss_at(
    model: BilevelModel,
    names: list[str],
    weights: Sequence[torch.Tensor],
    batch: Batch,
    level: str,
    update_bn: bool = False,
) -> torch.Tensor:
    """The loss at ``weights``; BN running statistics update in place with ``update_bn``, else the
    pass runs on copies of the buffers."""
    params: dict[str, torch.Tensor] = dict(zip(names, weights, strict=True))
    if not update_bn:  # copies of the buffers, all in one foreach copy
        named = list(model.supernet.named_buffers())
        copies = [torch.empty_like(b) for _, b in named]
        if copies:
            torch._foreach_copy_(copies, [b for _, b in named])
        params.update({name: c for (name, _), c in zip(named, copies, strict=True)})
    x, y = batch
    active = model.algorithm.active_set()  # a sparse step's virtual passes run the same sub-graph
    args = (
        (x, model.algorithm.arch_weights()) if active is None else (x, model.algorithm.arch_weights(), active)
    )
    logits = functional_call(model.supernet, params, args)
    return model.criterion(logits, y, level)


def unrolled_arch_gradients(
    model: BilevelModel,
    train_batch: Batch,
    val_batch: Batch,
    lr: float,
    weight_optimizer: torch.optim.Optimizer,
    fd_scale: float = 0.01,
    average: Callable[[Sequence[torch.Tensor | None]], None] | None = None,
    update_bn: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DARTS second-order architecture gradients (one per arch parameter) and the validation loss.

    ``fd_scale`` sets the finite-difference step ``eps = fd_scale / ||v||`` (0.01 in DARTS).
    ``average`` (many processes: the in-place mean over the ranks) is applied to the weight gradient of
    the virtual step and to ``v``, so every rank steps to the same ``w'`` and takes the same ``eps`` as
    one process with the whole batch; the returned gradients are still per rank (linear in the batch:
    averaging them gives the whole batch's).
    ``update_bn`` (default, as the DARTS code): the training-mode passes at ``w`` (for the virtual step),
    ``w+`` and ``w-`` update the BN running statistics, as the DARTS architect's forwards of the model
    itself do; the pass at ``w'`` runs on copies (DARTS runs it on a new model). Without it, no pass of
    the architecture step touches them (``--arch-step-bn frozen``). Gradients are the same either way.
    """
    names = [n for n, _ in model.supernet.named_parameters()]
    weights = [p for _, p in model.supernet.named_parameters()]
    alphas = model.arch_parameters()

    train_loss = _loss_at(model, names, weights, train_batch, "weights", update_bn)
    raw_grads = torch.autograd.grad(train_loss, weights, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, raw_grads, strict=True)]
    if average is not None:
        average(grads)
    with torch.no_grad():
        stepped = _sgd_virtual_step(weights, grads, weight_optimizer, lr)
    stepped = [w.detach().requires_grad_(True) for w in stepped]

    val_loss = _loss_at(model, names, stepped, val_batch, "arch")
    grad_all = torch.autograd.grad(val_loss, [*alphas, *stepped], allow_unused=True)
    d_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grad_all, strict=False)]
    v = [
        torch.zeros_like(w) if g is None else g for w, g in zip(stepped, grad_all[len(alphas) :], strict=True)
    ]
    if average is not None:
        average(v)

    # ||v|| in float64 over all weights at once (three launches, not four per weight)
    norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in v]).double())
    eps = fd_scale / float(norm) if float(norm) > 0 else 0.0
    if eps == 0.0:
        return d_alpha, val_loss.detach()
    with torch.no_grad():  # w + eps * g and w - eps * g, as foreach launches (same roundings)
        step = list(torch._foreach_mul(v, eps))
        current: list[torch.Tensor] = list(weights)
        w_plus = list(torch._foreach_add(current, step))
        w_minus = list(torch._foreach_sub(current, step))
    g_plus = torch.autograd.grad(
        _loss_at(model, names, w_plus, train_batch, "weights", update_bn), alphas, allow_unused=True
    )
    g_minus = torch.autograd.grad(
        _loss_at(model, names, w_minus, train_batch, "weights", update_bn), alphas, allow_unused=True
    )
    result = []
    for d, gp, gm in zip(d_alpha, g_plus, g_minus, strict=True):
        if gp is None or gm is None:
            result.append(d)
        else:
            result.append(d - lr * (gp - gm) / (2 * eps))
    return result, val_loss.detach()


def first_order_arch_gradients(
    model: BilevelModel, val_batch: Batch
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradient of the validation (upper-level) loss with respect to the architecture parameters."""
    x, y = val_batch
    loss = model.loss(x, y, level="arch")
    alphas = model.arch_parameters()
    grads = torch.autograd.grad(loss, alphas, allow_unused=True)
    return [
        torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads, strict=True)
    ], loss.detach()
