"""PC-DARTS' edge outputs, written once: the mixed channels and the scaled bypass placed straight into
their channel-shuffled positions, for all the edges leaving one state at once (Xu, Xie, Zhang, Chen, Qi,
Tian & Xiong, "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020,
section 3.2).

:func:`fastnas.nn.mixed.join_partial` scales the bypass, concatenates it after the mixed channels and
shuffles the result: three full-size copies per edge, and autograd sums the E bypass gradients of the
state's shared channels with E - 1 more passes. With ``C/k`` mixed channels, channel ``g C/k + i`` of the
concatenation moves to ``i k + g``, so viewing an output as [N, C/k, k, H, W] the mixed channels are slot
``g = 0`` and the bypass, viewed as [N, k-1, C/k, H, W] and transposed, slots ``1..k-1``:
:func:`shuffled_joins` writes both there (one copy, one multiply per edge). Its backward reads each output
gradient through the same views (a mixed part's gradient is a strided view, no copy), accumulates the
bypass gradient ``sum_e scale_e * g_e`` into one buffer (one pass per edge) and reduces each scale's
gradient. Same values as :func:`~fastnas.nn.mixed.join_partial` (data movement and the one rounding of
``tail * scale``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["shuffled_joins"]


def _views(out: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(mixed slots [N, C/k, H, W], bypass slots [N, k-1, C/k, H, W])`` of ``out`` [N, C, H, W] (views)."""
    n, c, h, w = out.shape
    grouped = out.view(n, c // k, k, h, w)
    return grouped[:, :, 0], grouped[:, :, 1:].transpose(1, 2)


class _ShuffledJoins(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tail: Tensor, scales: Tensor, k: int, *mixed: Tensor) -> tuple[Tensor, ...]:
        n, c_mixed, h, w = mixed[0].shape
        tail_groups = tail.view(n, k - 1, c_mixed, h, w)  # a view of a channel slice too
        outs = []
        for e, part in enumerate(mixed):
            out = part.new_empty((n, c_mixed * k, h, w))
            mixed_slots, bypass_slots = _views(out, k)
            mixed_slots.copy_(part)
            torch.mul(tail_groups, scales[e].to(tail.dtype), out=bypass_slots)
            outs.append(out)
        ctx.k = k
        ctx.save_for_backward(tail, scales)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        tail, scales = ctx.saved_tensors
        k = ctx.k
        grad_mixed: list[Tensor | None] = []
        grad_tail = None
        scale_sums: list[Tensor] = []
        acc = torch.float64 if tail.dtype == torch.float64 else torch.float32
        for e, grad in enumerate(grads):
            if grad is None:
                grad_mixed.append(None)
                scale_sums.append(scales.new_zeros((), dtype=acc))
                continue
            mixed_view, bypass = _views(grad.contiguous(), k)
            grad_mixed.append(mixed_view if ctx.needs_input_grad[3 + e] else None)
            tail_groups = tail.view(bypass.shape)
            scale = scales[e].to(grad.dtype)
            if ctx.needs_input_grad[0]:  # sum_e scale_e * g_e, in the tail's (contiguous) layout
                if grad_tail is None:
                    grad_tail = torch.empty_like(tail, memory_format=torch.contiguous_format)
                    torch.mul(bypass, scale, out=grad_tail.view(bypass.shape))
                else:
                    grad_tail.view(bypass.shape).addcmul_(bypass, scale)
            if ctx.needs_input_grad[1]:
                scale_sums.append((bypass * tail_groups).sum(dtype=acc))
        grad_scales = torch.stack(scale_sums).to(scales.dtype) if ctx.needs_input_grad[1] else None
        return (grad_tail, grad_scales, None, *grad_mixed)


def shuffled_joins(
    mixed: Sequence[Tensor], tail: Tensor, k: int, stride: int, bypass: str, scales: Tensor
) -> list[Tensor]:
    """:func:`fastnas.nn.mixed.join_partial` of each edge leaving one state (``k > 1``): its ``mixed``
    channels, then the state's bypassed ``tail`` (pooled 2x2 on a stride-2 edge, ``bypass``: ``max`` or
    ``avg``) times the edge's ``scales[e]`` (the sum of its weight row), channel-shuffled, written in one
    pass per edge."""
    if stride == 2:
        pool = F.max_pool2d if bypass == "max" else F.avg_pool2d
        tail = pool(tail, 2, 2, ceil_mode=True)
    return list(_ShuffledJoins.apply(tail.to(mixed[0].dtype), scales, k, *mixed))
