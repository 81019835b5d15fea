"""What every Triton kernel module of fastnas shares: whether Triton imports, whether its kernels run for a
device and dtype in this process, and the dispatch rule (a CUDA tensor takes the fused path, everything else
the reference; :func:`fastnas.backend.force_reference` forces the reference everywhere).

Kernels run for CUDA tensors, and for CPU tensors only when ``TRITON_INTERPRET=1`` was set before the
kernel modules were imported (the tests do this on machines without a GPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

from fastnas.backend import reference_forced

try:  # Triton is optional: without it every call takes the reference.
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "FLOAT_DTYPES",
    "HAS_TRITON",
    "KERNEL_DTYPES",
    "TRITON_IMPORT_ERROR",
    "TRITON_INTERPRET",
    "acc_dtype",
    "kernels_in_cpu_models",
    "model_uses_kernels",
    "tl",
    "triton",
    "triton_supports",
    "use_kernels",
]

# Triton decides at decoration time whether kernels run in the interpreter.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() == "1"

KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float64, *KERNEL_DTYPES)
"""Dtypes the ops accept; float64 always takes the PyTorch math (for gradcheck)."""


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels and references: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels run for tensors of ``device`` and ``dtype`` in this process."""
    if not HAS_TRITON or dtype not in KERNEL_DTYPES:
        return False
    return device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET)


def use_kernels(tensor: torch.Tensor) -> bool:
    """The dispatch rule: kernels when they support ``tensor`` and the reference is not forced."""
    return not reference_forced() and triton_supports(tensor.device, tensor.dtype)


_models_on_cpu: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fastnas_kernels_in_cpu_models", default=False
)


def model_uses_kernels(tensor: torch.Tensor) -> bool:
    """The dispatch rule for model code (``MixedEdge``, ``DilConv``, the fast executor).

    CUDA tensors take the kernels (unless the reference is forced). CPU tensors take them only under
    the interpreter *and* inside :func:`kernels_in_cpu_models`, so a CPU-only test run with
    ``TRITON_INTERPRET=1`` does not interpret every supernet of the suite; the kernel functions
    themselves keep :func:`use_kernels`.
    """
    if not use_kernels(tensor):
        return False
    return tensor.device.type != "cpu" or _models_on_cpu.get()


@contextlib.contextmanager
def kernels_in_cpu_models(enabled: bool = True) -> Iterator[None]:
    """Let model code run the (interpreted) Triton kernels on CPU tensors inside this block (tests)."""
    token = _models_on_cpu.set(bool(enabled))
    try:
        yield
    finally:
        _models_on_cpu.reset(token)
