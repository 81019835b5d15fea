"""What every Triton kernel module of fastnas shares: whether Triton imports, whether its kernels run for a
device and dtype in this process, the dispatch rule (a CUDA tensor takes the fused path, everything else
the reference; :func:`fastnas.backend.force_reference` forces the reference everywhere), the dtype rules,
the argument checks, buffer allocation and the sizing of tiles and split reductions.

Kernels run for CUDA tensors, and for CPU tensors only when ``TRITON_INTERPRET=1`` was set before the
kernel modules were imported (the tests do this on machines without a GPU).

A kernel module imports the names its kernels and operators look up at run time (``HAS_TRITON``, ``tl``,
``triton``, ``triton_supports``, ``TRITON_INTERPRET``) from here into its own namespace, so that tools can
switch them per module (``benchmarks/aot.py`` records launches for a GPU on CPU or meta tensors), and reaches
everything else as ``_common.<name>``. Each module allocates the buffers its kernels write in full through a
module-level ``_empty = _common.empty``, which the tests replace with a NaN fill.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

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
    "check_device_match",
    "check_dtype_match",
    "check_float_dtype",
    "check_shape_match",
    "empty",
    "kernels_in_cpu_models",
    "model_uses_kernels",
    "num_splits",
    "pow2_block",
    "shape_error",
    "split_chunks",
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
    """Accumulation dtype of the kernels, the C++/CUDA operators and their references: float64 for float64,
    float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# Argument checks: errors that name the function and the argument and say how to fix the call
# --------------------------------------------------------------------------------------------------


def shape_error(name: str, label: str, value: object, expected: str) -> ValueError:
    """The error for argument ``label`` of ``name`` when ``value`` is not a tensor of the ``expected``
    shape (described in words)."""
    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
    return ValueError(f"{name}: `{label}` must be {expected}, got {got}.")


def check_float_dtype(name: str, label: str, dtype: torch.dtype) -> None:
    """``TypeError`` unless ``dtype`` (of ``label``, written as it should read) is one of
    :data:`FLOAT_DTYPES`."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {label} must be float32, float64, bfloat16 or float16, got {dtype}.")


def check_dtype_match(name: str, label: str, t: Tensor, ref_label: str, ref: Tensor, fix: str) -> None:
    """``TypeError`` when ``t`` (``label``) and ``ref`` (``ref_label``) differ in dtype; ``fix`` says what
    to do."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: {label} has dtype {t.dtype} but {ref_label} has {ref.dtype}; {fix}.")


def check_shape_match(name: str, label: str, t: Tensor, ref_label: str, ref: Tensor, fix: str) -> None:
    """``ValueError`` when ``t`` (``label``) and ``ref`` (``ref_label``) differ in shape."""
    if t.shape != ref.shape:
        raise ValueError(
            f"{name}: {label} has shape {tuple(t.shape)} but {ref_label} has {tuple(ref.shape)}; {fix}."
        )


def check_device_match(name: str, label: str, t: Tensor, ref_label: str, ref: Tensor, fix: str = "") -> None:
    """``ValueError`` when ``t`` (``label``) and ``ref`` (``ref_label``) are on different devices."""
    if t.device != ref.device:
        hint = f"; {fix}." if fix else "."
        raise ValueError(f"{name}: {label} is on {t.device} but {ref_label} is on {ref.device}{hint}")


# --------------------------------------------------------------------------------------------------
# Buffers, tiles and split reductions of the launchers
# --------------------------------------------------------------------------------------------------


def empty(
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    *,
    channels_last: bool = False,
    stride: Sequence[int] | None = None,
) -> Tensor:
    """``torch.empty`` of ``shape``: with the given ``stride``; else, when ``channels_last``, with dim -3
    (C) innermost behind any leading dims (memory [..., H, W, C]); else contiguous."""
    if stride is not None:
        return torch.empty_strided(tuple(shape), tuple(stride), device=device, dtype=dtype)
    if not channels_last:
        return torch.empty(tuple(shape), device=device, dtype=dtype)
    d = len(shape)
    lead = list(range(d - 3))
    perm = [*lead, d - 2, d - 1, d - 3]  # [..., H, W, C]
    inverse = [*lead, d - 1, d - 3, d - 2]
    return torch.empty([shape[i] for i in perm], device=device, dtype=dtype).permute(inverse)


def pow2_block(extent: int, lo: int = 1, hi: int | None = None) -> int:
    """A tile dimension for ``extent`` elements: the next power of two of ``extent`` (1 for 0), at most
    ``hi``, at least ``lo``."""
    block = 1 << max(0, int(extent) - 1).bit_length()
    return max(lo, block if hi is None else min(hi, block))


def num_splits(length: int, programs: int, block: int, max_splits: int, target_programs: int = 1024) -> int:
    """How many chunks a reduction over ``length`` elements is split into: enough that ``programs`` times
    the count reaches ``target_programs`` (a GPU kept busy), while each chunk still covers 4 blocks of
    ``block`` elements; at most ``max_splits``. (Under the interpreter the launchers use 1.)"""
    by_size = max(1, length // (4 * block))
    by_occupancy = max(1, -(-target_programs // max(programs, 1)))
    return int(max(1, min(by_size, by_occupancy, max_splits)))


def split_chunks(length: int, splits: int, block: int) -> tuple[int, int]:
    """``(chunk, count)`` of a split reduction over ``length`` elements: the chunk length, a multiple of
    ``block`` such that ``splits`` chunks cover ``length``, and how many chunks it then takes."""
    per_split = -(-length // splits)
    chunk = -(-per_split // block) * block
    return chunk, -(-length // chunk)


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


def grad_node(t: Tensor) -> torch.autograd.graph.Node | None:
    """The autograd node that receives ``t``'s gradient (``t.grad_fn``; None for a leaf), kept by a custom
    op's ``setup_context`` for :func:`grad_wanted`."""
    return t.grad_fn


def grad_wanted(needs_input_grad: bool, node: torch.autograd.graph.Node | None) -> bool:
    """Whether this backward pass uses an input's gradient: it requires grad *and*, when it came from
    another op (``node``, see :func:`grad_node`), the engine will run that op's backward. A pass that
    asks for some gradients only (``backward(inputs=...)``, ``torch.autograd.grad``: DARTS' architecture
    step wants the alphas' gradients, not the weights') then skips the unwanted gradient kernels, which
    ``ctx.needs_input_grad`` alone (set from ``requires_grad``) cannot tell. Outside an engine pass (e.g. a
    traced backward) every gradient is wanted."""
    if not needs_input_grad:
        return False
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:  # not inside a backward pass of the engine
        return True
