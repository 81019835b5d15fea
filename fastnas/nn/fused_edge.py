"""One mixed edge with its final BNs folded into the weighted sum.

In the search supernet every candidate op except ``none`` and the identity skip ends in
``BatchNorm2d(affine=False)`` (as in Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019, and its public code), so an edge is
``sum_k w_k * BN_k(z_k) + w_skip * x`` with ``z_k`` the op's output before its last BN. This module
finds that split in the op modules (:func:`split_final_bn`), and computes an edge from the pre-BN
outputs with :func:`fastnas.kernels.mixed_bn_sum.mixed_bn_sum`, updating each folded BN's running
statistics exactly as ``nn.BatchNorm2d`` does in training mode (:func:`update_bn_running_stats`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fastnas.kernels.mixed_bn_sum import mixed_bn_sum, update_running_stats
from fastnas.ops.darts_ops import Identity

PreBN = Callable[[Tensor], Tensor]

__all__ = [
    "deferred_running_stats",
    "edge_from_pre_bn",
    "foldable_bn",
    "split_final_bn",
    "update_bn_running_stats",
    "update_bns_running_stats",
]


def foldable_bn(module: nn.Module) -> bool:
    """A BN the fused sum can replace: 2-D, no affine parameters, batch statistics (training mode)."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and not module.affine
        and module.training
        and (module.track_running_stats is False or module.running_mean is not None)
    )


def split_final_bn(op: nn.Module) -> tuple[PreBN, nn.BatchNorm2d] | None:
    """``(pre_bn, bn)`` with ``op(x) == bn(pre_bn(x))`` when ``op`` ends in a foldable BN, else ``None``.

    Ops that expose ``pre_bn(x)`` and ``final_bn`` (``DilConv``, ``SepConv``, ``FactorizedReduce``) are
    split there; an ``nn.Sequential`` ending in a BN (a pooling op of the search supernet is
    ``Sequential(pool, BN)``) is split before its last module.
    """
    final_bn = getattr(op, "final_bn", None)
    pre_bn = getattr(op, "pre_bn", None)
    if isinstance(final_bn, nn.BatchNorm2d) and callable(pre_bn):  # DilConv, SepConv, FactorizedReduce
        return (pre_bn, final_bn) if foldable_bn(final_bn) else None
    if isinstance(op, nn.Sequential) and len(op) > 1 and foldable_bn(op[-1]):  # e.g. Sequential(pool, BN)
        return nn.Sequential(*list(op)[:-1]), op[-1]  # type: ignore[return-value]
    return None


def update_bn_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d.forward`` does to its buffers in training mode, from batch ``mean`` and
    biased ``var`` of ``count`` values per channel (momentum ``None`` = cumulative average)."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return
    with torch.no_grad():
        momentum = bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        update_running_stats(bn.running_mean, bn.running_var, mean, var, count, float(momentum or 0.0))


_PENDING: list[list[tuple[Sequence[nn.BatchNorm2d], Tensor, Tensor, int]]] = []


@contextlib.contextmanager
def deferred_running_stats() -> Iterator[None]:
    """Collect the running-statistics updates of :func:`update_bns_running_stats` inside this block and
    apply them at its end, all BNs together in a few ``torch._foreach_*`` launches (the fast executor
    wraps each cell in it: one set of launches per cell instead of one per edge). The values are those of
    immediate updates: every BN is updated once per block from its own batch statistics, in any order.
    Nothing is applied when the block raises."""
    pending: list[tuple[Sequence[nn.BatchNorm2d], Tensor, Tensor, int]] = []
    _PENDING.append(pending)
    try:
        yield
    finally:
        _PENDING.pop()
    if pending:
        _apply_running_stats(pending)


def update_bns_running_stats(bns: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor, count: int) -> None:
    """:func:`update_bn_running_stats` of every ``bns[k]`` from ``mean[k]`` / ``var[k]`` ([K, C]), as a few
    ``torch._foreach_*`` launches for all K BNs (one kernel each on CUDA) instead of four per BN; inside
    :func:`deferred_running_stats` the update waits for the end of the block. BNs with a cumulative average
    (``momentum=None``), buffers of another dtype than the statistics or another momentum than the first are
    updated one by one. The same arithmetic as ``nn.BatchNorm2d``: ``lerp`` towards the batch mean and the
    unbiased ``var * count / (count - 1)``."""
    if count < 2:
        raise ValueError(f"update_bns_running_stats: need count >= 2 values per channel, got {count}.")
    if _PENDING:
        _PENDING[-1].append((bns, mean, var, count))
        return
    _apply_running_stats([(bns, mean, var, count)])


def _apply_running_stats(updates: Sequence[tuple[Sequence[nn.BatchNorm2d], Tensor, Tensor, int]]) -> None:
    """Apply ``(bns, mean [K, C], var [K, C], count)`` updates: one ``foreach`` group per (count, momentum,
    dtype); a BN that appears twice is updated in order, one by one."""
    ids = [id(bn) for bns, _, _, _ in updates for bn in bns]
    repeated = len(ids) != len(set(ids))
    groups: dict[tuple[int, float, torch.dtype, torch.dtype], tuple[list[Tensor], ...]] = {}
    tracked: list[Tensor] = []
    for bns, mean, var, count in updates:
        means, variances = mean.unbind(0), var.unbind(0)  # views: no launch
        for k, bn in enumerate(bns):
            if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
                continue
            foreach = (
                not repeated
                and bn.momentum is not None
                and bn.running_mean.dtype == mean.dtype
                and bn.running_var.dtype == var.dtype
            )
            if not foreach:
                update_bn_running_stats(bn, mean[k], var[k], count)
                continue
            key = (count, float(bn.momentum or 0.0), mean.dtype, var.dtype)
            running_means, running_vars, batch_means, batch_vars = groups.setdefault(key, ([], [], [], []))
            running_means.append(bn.running_mean)
            running_vars.append(bn.running_var)
            batch_means.append(means[k])
            batch_vars.append(variances[k])
            if bn.num_batches_tracked is not None:
                tracked.append(bn.num_batches_tracked)
    with torch.no_grad():
        if tracked:
            torch._foreach_add_(tracked, 1)
        for (count, momentum, _, _), (running_means, running_vars, batch_means, batch_vars) in groups.items():
            torch._foreach_lerp_(running_means, batch_means, momentum)
            torch._foreach_lerp_(running_vars, torch._foreach_mul(batch_vars, count / (count - 1)), momentum)


def edge_from_pre_bn(
    pre_bn_outputs: Sequence[Tensor],
    bns: Sequence[nn.BatchNorm2d],
    weights: Tensor,
    identity: Tensor | None = None,
    identity_weight: Tensor | None = None,
) -> Tensor:
    """``sum_k weights[k] * bns[k](pre_bn_outputs[k]) + identity_weight * identity`` in one fused op,
    with the running statistics of every ``bns[k]`` updated (the mixed edge of the DARTS supernet with its
    BN-terminated ops)."""
    terms = list(pre_bn_outputs)  # read in place (views of batched outputs): no stack
    first = terms[0]
    eps = bns[0].eps
    if any(bn.eps != eps for bn in bns):
        raise ValueError("edge_from_pre_bn: the folded BNs of one edge must share one eps")
    if identity is not None:
        identity = identity.to(first.dtype)
    out, mean, var = mixed_bn_sum(terms, weights, identity, identity_weight, eps)
    update_bns_running_stats(bns, mean, var, first.shape[0] * first.shape[2] * first.shape[3])
    return out


def is_identity(op: nn.Module) -> bool:
    """The parameter-free identity skip (stride-1 ``skip_connect``)."""
    return isinstance(op, Identity)
