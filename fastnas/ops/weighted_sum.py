"""Weighted sum of one edge's candidate-op outputs: ``out = sum_k weights[k] * inputs[k]``.

This is the DARTS mixed op's reduction (``sum_k softmax(alpha)_k * op_k(x)``; Liu, Simonyan & Yang,
"DARTS: Differentiable Architecture Search", ICLR 2019).
:func:`weighted_sum` runs the C++/CUDA operator ``torch.ops.fastnas.weighted_sum`` when the extension
is built for the inputs' device and the reference is not forced (:mod:`fastnas.backend`), else
:func:`weighted_sum_reference`. Both follow the same dtype rules: the inputs share one dtype (float32,
float64, float16 or bfloat16), the weights may have another floating dtype (fp32 weights with bf16
inputs under autocast), accumulation is in float32 (float64 for float64 inputs; the rule of the Triton
kernels too, :func:`fastnas.kernels._common.acc_dtype`), and the output has the inputs' dtype.
Gradients: ``grad inputs[k] = weights[k] * grad_out`` (inputs' dtype) and ``grad weights[k] =
sum(grad_out * inputs[k])`` (weights' dtype).

Importing this module registers the fake (meta) implementations of the operators, so that
``torch.compile`` can trace them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastnas._ext import cuda_compiled, extension_available
from fastnas.backend import reference_forced
from fastnas.kernels._common import (
    acc_dtype,
    check_device_match,
    check_dtype_match,
    check_float_dtype,
    check_shape_match,
)

__all__ = ["weighted_sum", "weighted_sum_reference"]


def _check_args(inputs: Sequence[Tensor], weights: Tensor) -> list[Tensor]:
    """Validate the arguments of a weighted sum; returns ``inputs`` as a list."""
    name = "weighted_sum"
    if isinstance(inputs, Tensor):
        raise TypeError(
            "weighted_sum: `inputs` must be a sequence of tensors (one per candidate op), got a single "
            "tensor; pass `list(x.unbind(0))` to sum over a stacked dimension."
        )
    xs = list(inputs)
    if not xs:
        raise ValueError("weighted_sum: `inputs` is empty; pass at least one candidate-op output.")
    if not isinstance(weights, Tensor):
        raise TypeError(f"weighted_sum: `weights` must be a tensor, got {type(weights).__name__}.")
    if weights.dim() != 1:
        raise ValueError(
            "weighted_sum: `weights` must be 1-D with one weight per input, "
            f"got shape {tuple(weights.shape)}."
        )
    if weights.shape[0] != len(xs):
        raise ValueError(
            f"weighted_sum: got {len(xs)} inputs but {weights.shape[0]} weights; "
            "pass exactly one weight per input."
        )
    check_float_dtype(name, "`weights`", weights.dtype)
    x0 = xs[0]
    for k, x in enumerate(xs):
        if not isinstance(x, Tensor):
            raise TypeError(f"weighted_sum: inputs[{k}] is a {type(x).__name__}, not a tensor.")
        label = f"inputs[{k}]"
        check_float_dtype(name, label, x.dtype)
        check_dtype_match(name, label, x, "inputs[0]", x0, "cast all inputs to one dtype")
        check_shape_match(name, label, x, "inputs[0]", x0, "all inputs must have the same shape")
        check_device_match(name, label, x, "inputs[0]", x0, "all inputs must be on one device")
    check_device_match(name, "`weights`", weights, "inputs[0]", x0, "move the weights to the inputs' device")
    return xs


def weighted_sum_reference(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Plain PyTorch ``sum_k weights[k] * inputs[k]`` with the dtype rules of the module docstring."""
    xs = _check_args(inputs, weights)
    acc = acc_dtype(xs[0].dtype)
    w = weights.to(acc)
    out = w[0] * xs[0].to(acc)
    for k in range(1, len(xs)):
        out = out + w[k] * xs[k].to(acc)
    return out.to(xs[0].dtype)


def _extension_supports(device: torch.device) -> bool:
    if reference_forced() or not extension_available():
        return False
    if device.type in ("cpu", "meta"):
        return True
    return device.type == "cuda" and cuda_compiled()


def weighted_sum(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``sum_k weights[k] * inputs[k]``: the fused operator where available, else the reference.

    Args:
        inputs: K >= 1 tensors of one shape, dtype and device (any layout; the operator makes them
            dense internally, keeping channels-last when every input is channels-last).
        weights: 1-D tensor of K floating weights on the same device (its dtype may differ).

    Returns:
        A tensor of the inputs' shape and dtype.
    """
    xs = _check_args(inputs, weights)
    if _extension_supports(xs[0].device):
        return torch.ops.fastnas.weighted_sum(xs, weights)
    return weighted_sum_reference(xs, weights)


def _memory_format(inputs: Sequence[Tensor]) -> torch.memory_format:
    """Layout of the operator's outputs; mirrors ``detail::choose_memory_format`` in csrc/weighted_sum.cpp."""
    x0 = inputs[0]
    if x0.dim() != 4 or x0.is_contiguous():
        return torch.contiguous_format
    if all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs):
        return torch.channels_last
    return torch.contiguous_format


def _register_fakes() -> None:
    """Fake (meta) implementations of the operators, used by torch.compile and FakeTensor tracing."""

    def weighted_sum_fake(inputs: list[Tensor], weights: Tensor) -> Tensor:
        x0 = inputs[0]
        return torch.empty(x0.shape, dtype=x0.dtype, device=x0.device, memory_format=_memory_format(inputs))

    def weighted_sum_backward_fake(
        grad_out: Tensor, inputs: list[Tensor], weights: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        x0 = inputs[0]
        fmt = _memory_format(inputs)
        grads = [torch.empty(x0.shape, dtype=x0.dtype, device=x0.device, memory_format=fmt) for _ in inputs]
        return grads, weights.new_empty((len(inputs),))

    for name, fn in (
        ("fastnas::weighted_sum", weighted_sum_fake),
        ("fastnas::weighted_sum_backward", weighted_sum_backward_fake),
    ):
        try:
            torch.library.register_fake(name, fn)
        except RuntimeError as exc:  # already registered (module re-imported)
            if "already" not in str(exc):
                raise


if extension_available():
    _register_fakes()
