"""One separable-conv stage of the fast executor, ``ReLU -> depthwise -> pointwise`` with the following BN's
sums (the block of the DARTS ``DilConv``/``SepConv``; Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019), that keeps only its input and output for backward.

The depthwise output ``h`` is the pointwise convolution's input: autograd through the two operators
(:func:`~fastnas.kernels.depthwise_conv.relu_depthwise_conv`, then
:func:`~fastnas.kernels.pointwise_conv.pointwise_conv_stats`) keeps ``h`` alive until backward, although it
is needed only for the pointwise weight's gradient. :func:`conv_stage` saves ``x`` and the output ``z``
instead and recomputes ``h`` (one depthwise launch) in a backward pass that wants the pointwise weight's
gradient; a pass that does not (DARTS' architecture step asks for the alphas' gradients only,
:func:`fastnas.kernels._common.grad_wanted`) recomputes nothing. On tensors the kernels do not take (a CPU,
float64, :func:`fastnas.backend.force_reference`) it is the plain composition of the two functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastnas.kernels import _common
from fastnas.kernels.depthwise_conv import relu_depthwise_conv
from fastnas.kernels.pointwise_conv import pointwise_conv_stats

__all__ = ["conv_stage"]


class _ConvStage(torch.autograd.Function):
    """The two operators' forward; backward through their backward operators, ``h`` recomputed."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int, padding: int, dilation: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = torch.ops.fastnas.relu_depthwise_conv(x, dw_weight, stride, padding, dilation, True)
        z, total, total_sq, shift = torch.ops.fastnas.pointwise_conv_stats(h, pw_weight)
        ctx.conv = (stride, padding, dilation)
        ctx.nodes = tuple(_common.grad_node(t) for t in (x, dw_weight, pw_weight))
        ctx.h_like = h.shape == z.shape and h.stride() == z.stride()
        ctx.save_for_backward(x, dw_weight, pw_weight, z, shift, *(() if ctx.h_like else (h,)))
        ctx.mark_non_differentiable(shift)
        ctx.set_materialize_grads(False)
        return z, total, total_sq, shift

    @staticmethod
    def backward(
        ctx: Any, grad_z: Tensor | None, grad_total: Tensor | None, grad_total_sq: Tensor | None, _: Any
    ) -> tuple[Tensor | None, ...]:
        x, dw_weight, pw_weight, z, shift, *kept = ctx.saved_tensors
        needs = [
            _common.grad_wanted(bool(n), node)
            for n, node in zip(ctx.needs_input_grad[:3], ctx.nodes, strict=True)
        ]
        none = (None,) * 6
        if not any(needs) or (grad_z is None and grad_total is None and grad_total_sq is None):
            return none
        needs_x, needs_dw, needs_pw = needs
        stride, padding, dilation = ctx.conv
        if needs_pw:  # the pointwise weight's gradient reads h: recompute it (kept when shapes differ)
            h = (
                kept[0]
                if kept
                else torch.ops.fastnas.relu_depthwise_conv(x, dw_weight, stride, padding, dilation, True)
            )
        else:
            # grad h reads only h's shape and layout, which z has (C_in = C_out, same layout)
            h = kept[0] if kept else z
        needs_h = needs_x or needs_dw
        grad_h, grad_pw = torch.ops.fastnas.pointwise_conv_stats_backward(
            grad_z, grad_total, grad_total_sq, h, pw_weight, z, shift, needs_h, needs_pw
        )
        grad_x = grad_dw = None
        if needs_h:
            grad_x, grad_dw = torch.ops.fastnas.relu_depthwise_conv_backward(
                grad_h, x, dw_weight, stride, padding, dilation, True, needs_x, needs_dw
            )
        return (
            grad_x if needs_x else None,
            grad_dw if needs_dw else None,
            grad_pw if needs_pw else None,
            None,
            None,
            None,
        )


def conv_stage(
    x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int, padding: int, dilation: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``pointwise_conv_stats(relu_depthwise_conv(x, dw_weight, stride, padding, dilation), pw_weight)``:
    ``(z, total, total_sq, shift)`` for ``x`` [N, C, H, W] (shared by the rows) or [R, N, C, H, W],
    ``dw_weight`` [R, C, k, k], ``pw_weight`` [R, C_out, C]; the depthwise output is recomputed in backward
    instead of kept (see the module docstring)."""
    if not _common.use_kernels(x):
        return pointwise_conv_stats(relu_depthwise_conv(x, dw_weight, stride, padding, dilation), pw_weight)
    return _ConvStage.apply(x, dw_weight, pw_weight, stride, padding, dilation)
