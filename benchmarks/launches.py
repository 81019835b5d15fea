"""Count the GPU kernels one full search iteration launches, and the bytes they read and write, on a CPU.

One iteration is :class:`benchmarks.step.SearchStep` (the method's per-step hook, the architecture step,
then the weight step, both optimisers, as ``fastnas.train.search.SearchRunner``), counted after one
uncounted warm-up iteration (the first one also creates the optimisers' state). The model is built on the
CPU as in a real run, then moved to the ``meta`` device: tensors keep their shapes, dtypes and strides but
no data, so a full-size iteration (C=16, 8 cells, batch 64, 32x32) costs seconds on a CPU.
:func:`emulate_cuda_dispatch` makes every device-dependent choice take the branch it takes for CUDA tensors
(fused BN-sum edges, Triton kernels, the CUDA ``weighted_sum`` operator, ``foreach`` optimisers and
gradient clipping, the fused dropout kernel). :class:`LaunchCounter`, a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`, sees every operator below autograd and counts:

- **ATen operators** touching a device tensor: one launch each, except those of :data:`NO_KERNEL_OPS`
  (views and metadata, allocations, host reads) and those that write nothing (every written tensor empty).
  Operators on host (CPU) tensors only (Adam's step counters, the sampled masks) are host work; a copy
  between host and device counts as one launch; a ``_foreach_*`` operator as the kernels its
  ``multi_tensor_apply`` loop launches (:func:`foreach_launches`). One launch per operator is a lower
  bound: cuDNN / cuBLAS may launch several kernels for one convolution or matmul, a composite operator
  such as ``select_backward`` a fill and a copy.
- **fastnas Triton custom ops** (``torch.library.custom_op`` in ``kernels/*.py``): their Python body runs
  on the meta tensors with every Triton launch ``kernel[grid](...)`` recorded and skipped
  (:func:`record_triton_launches`). The op counts **the number of Triton kernels it launches**, and its
  own tensor inputs (read) and outputs (written) once each, the traffic floor of fused kernels; the ATen
  operators of its body (``torch._foreach_zero_`` of accumulators, ``part.sum()`` of split partials,
  decomposed as they run on a GPU) are counted as above under ``<op>/<aten op>``.
- **fastnas C++/CUDA operators** (``weighted_sum``, ``csrc/``): ``ceil(K / 32)`` kernels for K inputs, one
  more (the zero fill of the weight gradient) for the backward (:func:`cxx_op_launches`).

Bytes of a tensor: ``numel * element_size``, broadcast (stride-0) dimensions counted once. An operator
reads its tensor arguments (not ``out=``, nor the ``self`` of :data:`SELF_NOT_READ`: write-only or
shape-only) and writes its outputs and the arguments its schema marks as mutated (and
:data:`UNMARKED_WRITES`: BN's running statistics), each tensor once. Floors: bytes / 3 TB/s (H100/H200-class
HBM) and 4 us per launch.

Host reads (``float(t)``, ``.tolist()``, ``.cpu()``) need values: a device tensor of at most
:data:`SHADOW_NUMEL` elements (parameters and buffers at build, architecture weights, masks, optimiser
state) carries a real CPU **shadow** computed alongside, so a method samples its sub-graph from its real
alphas. A read of a tensor without one (DARTS' finite-difference ``||v||``) answers 1 or zeros
(``host_reads_guessed``); a tensor updated in place from values without shadows (the alphas after the
Adam step: their gradient comes from activations) keeps its value from before, read as ``stale``.

Every registered search method (:data:`fastnas.methods.METHODS`) and cell executor is counted, with
``plain`` (the reference executor with every op forced to PyTorch) first; a case a method cannot run is a
row saying why (:func:`applies`, or the method's own refusal).

Run it alone (``python -m benchmarks.launches --help``) or as the ``launches`` section of
``benchmarks/run.py``. ``count_search_step(..., device="cpu")`` counts a real CPU run with the same
dispatch, to check the meta count (``tests/test_launches.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from benchmarks.report import Column, Row, Section, progress, section_markdown
from benchmarks.step import build_search_step, executor_names, method_names, takes_order
from fastnas.algorithms import SearchAlgorithm
from fastnas.errors import ConfigError
from fastnas.methods import get_method
from fastnas.nn import fast_executor
from fastnas.nn.executor import AUTO
from fastnas.search_model import SearchModel

__all__ = [
    "BANDWIDTH_BYTES_PER_S",
    "LAUNCH_US",
    "NO_KERNEL_OPS",
    "SELF_NOT_READ",
    "UNMARKED_WRITES",
    "LaunchCounter",
    "OpStats",
    "applies",
    "count_search_step",
    "emulate_cuda_dispatch",
    "foreach_launches",
    "launch_executors",
    "launches_rows",
    "launches_section",
    "record_triton_launches",
    "tensor_bytes",
]

BANDWIDTH_BYTES_PER_S = 3e12  # the bandwidth floor's memory speed: 3 TB/s
LAUNCH_US = 4.0  # the launch floor: microseconds per kernel launch
SHADOW_NUMEL = 1024  # device tensors up to this many elements carry real values (host reads)
GOAL_LAUNCH_RATIO = 0.25  # fast <= 1/4 of the reference executor's launches
GOAL_BYTE_RATIO = 0.5  # fast <= 1/2 of the reference executor's bytes
#: the work floor against the plain loop: (launches, bytes, saved for backward) per method family
FLOOR_GOALS: dict[str, tuple[float, float, float]] = {"dense": (0.25, 0.5, 0.5), "sparse": (0.5, 0.75, 0.75)}

#: ATen operators (schema names) that launch no kernel: views and metadata (a new tensor header over the
#: same memory), allocations (memory only) and host reads of values or properties. ``reshape`` reaches a
#: dispatch mode only as ``view`` or as ``clone`` + ``_unsafe_view``; it is listed for completeness.
NO_KERNEL_OPS: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        # views and metadata
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "reshape",
        "view_as",
        "t",
        "t_",
        "expand",
        "expand_as",
        "as_strided",
        "as_strided_",
        "detach",
        "detach_",
        "alias",
        "lift_fresh",
        "slice",
        "select",
        "narrow",
        "permute",
        "unsqueeze",
        "unsqueeze_",
        "squeeze",
        "squeeze_",
        "transpose",
        "transpose_",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "diagonal",
        "unfold",
        "movedim",
        "view_as_real",
        "view_as_complex",
        "_conj",
        "_neg_view",
        "resolve_conj",
        "resolve_neg",
        "_has_compatible_shallow_copy_type",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "size",
        "stride",
        "numel",
        "dim",
        "is_contiguous",
        "is_same_size",
        # allocations
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "resize_",
        "set_",
        # host reads (a device-to-host copy and a synchronisation, not a kernel)
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "equal",
    )
)

#: Operators whose ``self`` argument's data is not read (written only, or only its shape used).
SELF_NOT_READ: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        # in place, written without being read
        "copy_",
        "fill_",
        "zero_",
        "uniform_",
        "normal_",
        "bernoulli_",
        "random_",
        "exponential_",
        # factories that take only the shape, dtype and device of ``self``
        "zeros_like",
        "ones_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_zeros",
        "new_ones",
        "new_full",
    )
)

#: Arguments written in place that the schema does not mark as mutated: (position, the ``training`` flag's
#: position that must be true for the write).
UNMARKED_WRITES: dict[str, tuple[tuple[int, ...], int]] = {"aten::native_batch_norm": ((3, 4), 5)}

_HOST_READS = frozenset({"aten::_local_scalar_dense", "aten::item"})
_DYNAMIC_SHAPE_OPS = frozenset({"aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim"})
_SHADOW = "_launch_counter_shadow"  # attribute of a meta tensor: its real value on the CPU
_STALE = "_launch_counter_stale"  # attribute: the shadow is the value before an update not computed


# ----------------------------------------------------------------------------- bytes
def tensor_bytes(t: torch.Tensor) -> int:
    """``numel * element_size``, broadcast (stride-0) dimensions counted once."""
    if t.numel() == 0:
        return 0
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    return elements * t.element_size()


def _tensors(tree: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in ``tree`` (nested tuples, lists and dicts of operator arguments), in order."""
    out = [] if out is None else out
    if isinstance(tree, torch.Tensor):
        out.append(tree)
    elif isinstance(tree, (tuple, list)):
        for x in tree:
            _tensors(x, out)
    elif isinstance(tree, dict):
        for x in tree.values():
            _tensors(x, out)
    return out


def _map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``fn`` applied to every leaf of ``tree`` (tuples, lists and dicts rebuilt)."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, x) for x in tree)
    if isinstance(tree, dict):
        return {k: _map(fn, x) for k, x in tree.items()}
    return fn(tree)


def _unique(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


@functools.cache
def _argument_roles(func: Any) -> tuple[tuple[int, str, bool, bool, bool], ...]:
    """Per schema argument of ``func``: (position or -1 when keyword-only, name, read, written,
    keyword-only); ``read`` is false for ``out=`` and the ``self`` of :data:`SELF_NOT_READ`."""
    schema = func._schema
    roles = []
    for i, arg in enumerate(schema.arguments):
        read = not (arg.name == "out" or (arg.name == "self" and schema.name in SELF_NOT_READ))
        written = arg.alias_info is not None and arg.alias_info.is_write
        roles.append((i, arg.name, read, written, arg.kwarg_only))
    return tuple(roles)


def read_and_written(
    func: Any, args: tuple, kwargs: dict, out: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors ``out = func(*args, **kwargs)`` reads, and those it writes (its outputs and the
    arguments its schema marks as mutated), each once."""
    read: list[torch.Tensor] = []
    written: list[torch.Tensor] = []
    for i, name, reads, writes, kwarg_only in _argument_roles(func):
        value = kwargs.get(name) if kwarg_only or i >= len(args) else args[i]
        if value is None or isinstance(value, (int, float, bool, str, torch.dtype, torch.device)):
            continue
        tensors = _tensors(value)
        if reads:
            read += tensors
        if writes:
            written += tensors
    unmarked = UNMARKED_WRITES.get(func._schema.name)
    if unmarked is not None and len(args) > unmarked[1] and args[unmarked[1]]:
        written += [args[i] for i in unmarked[0] if isinstance(args[i], torch.Tensor)]
    written += _tensors(out)
    return _unique(read), _unique(written)


# ----------------------------------------------------------------------------- foreach operators
#: ``multi_tensor_apply`` (ATen/native/cuda/MultiTensorApply.cuh): tensors per launch by the number of
#: tensor lists, blocks per launch, elements per block.
_FOREACH_MAX_TENSORS = (110, 64, 48, 36, 30)
_FOREACH_MAX_BLOCKS = 320
_FOREACH_CHUNK = 65536


def foreach_launches(args: tuple, out: Any) -> int:
    """CUDA launches of a ``_foreach_*`` operator: ``multi_tensor_apply`` launches a kernel whenever its
    tensor list (the limit falls with the number of lists) or its 320 blocks of 65536 elements are full
    (an estimate of that loop; ``_foreach_norm`` has one more reduction kernel)."""
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
    if not lists:
        return 1
    depth = len(lists) + (1 if isinstance(out, (list, tuple)) and out else 0)
    max_tensors = _FOREACH_MAX_TENSORS[min(depth, len(_FOREACH_MAX_TENSORS)) - 1]
    tensors = [t for t in lists[0] if t.numel()]
    chunks = sum(math.ceil(t.numel() / _FOREACH_CHUNK) for t in tensors)
    return max(1, math.ceil(len(tensors) / max_tensors), math.ceil(chunks / _FOREACH_MAX_BLOCKS))


# ----------------------------------------------------------------------------- Triton and C++ ops
_triton_records: list[tuple[list[str], bool]] = []  # the open recordings, innermost last
_unpatched_getitem: list[Any] = []  # KernelInterface.__getitem__ while it is patched


def _record_launch(self: Any, grid: Any) -> Callable[..., Any]:
    """``kernel[grid]`` while recording: a launcher that records the kernel's name (and runs it if asked)."""
    fn = getattr(self, "fn", None)
    name = str(getattr(fn, "__name__", None) or getattr(self, "__name__", "triton_kernel"))

    def launcher(*args: Any, **kwargs: Any) -> Any:
        record, run = _triton_records[-1]
        record.append(name)
        if not run:
            return None
        with _disable_current_modes():  # what the interpreter does on the host is not the kernel's
            return _unpatched_getitem[0](self, grid)(*args, **kwargs)

    return launcher


@contextlib.contextmanager
def record_triton_launches(run: bool = False) -> Iterator[list[str]]:
    """Record every Triton launch ``kernel[grid](...)`` inside the block (the kernel names, in the list it
    yields; a nested block records its own); the launches are skipped unless ``run``."""
    from triton.runtime.jit import KernelInterface

    record: list[str] = []
    if not _triton_records:
        _unpatched_getitem.append(KernelInterface.__getitem__)
        KernelInterface.__getitem__ = _record_launch
    _triton_records.append((record, run))
    try:
        yield record
    finally:
        _triton_records.pop()
        if not _triton_records:
            KernelInterface.__getitem__ = _unpatched_getitem.pop()


WEIGHTED_SUM_MAX_INPUTS = 32  # FASTNAS_WS_MAX_INPUTS_PER_LAUNCH, csrc/cuda/weighted_sum_kernel.h


def cxx_op_launches(name: str, args: tuple) -> int:
    """CUDA kernels of a fastnas C++ operator (``csrc/cuda/weighted_sum_cuda.cpp``): one per 32 inputs,
    plus the zero fill of the weight gradient in the backward."""
    backward = name.endswith("_backward")
    inputs = args[1] if backward else args[0]
    launches = max(1, math.ceil(len(inputs) / WEIGHTED_SUM_MAX_INPUTS))
    return launches + 1 if backward else launches


def _python_custom_op(name: str) -> Any:
    from torch._library.custom_ops import _maybe_get_opdef

    return _maybe_get_opdef(name)


# ----------------------------------------------------------------------------- the counter
def _to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``func`` copies a meta tensor to CPU memory (``_to_copy`` to the CPU, ``cpu.copy_(meta)``)."""
    name = func._schema.name
    if name == "aten::_to_copy":
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and args[0].device.type == "meta"
    if name == "aten::copy_":
        return args[0].device.type == "cpu" and args[1].device.type == "meta"
    return False


_ALLOCATIONS = frozenset(
    {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided"}
)


def _forget_values(tensors: Sequence[torch.Tensor]) -> None:
    """Drop the shadows of ``tensors`` (written by kernels that did not run)."""
    for t in tensors:
        t.__dict__.pop(_SHADOW, None)
        t.__dict__.pop(_STALE, None)


def _is_stale(t: torch.Tensor) -> bool:
    return bool(t.__dict__.get(_STALE, False))


def _zeros_for_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        with _disable_current_modes():
            return torch.zeros(x.shape, dtype=x.dtype)
    return x


@functools.cache
def _composite_implicit(func: Any) -> bool:
    """Whether ``func`` is a ``CompositeImplicitAutograd`` operator (``to``, ``einsum``, ``reshape``): above
    autograd it runs as the operators it is made of, so the counter must see those."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


@dataclass
class OpStats:
    """Calls, launches and bytes of one operator over a counted region."""

    calls: int = 0
    launches: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _cpu_device(x: Any) -> Any:
    return torch.device("cpu") if isinstance(x, torch.device) and x.type != "cpu" else x


class LaunchCounter(TorchDispatchMode):
    """Kernel launches and bytes of the operators run under it (module docstring), per operator in
    :attr:`ops`: only while :attr:`counting`, and only operators that touch a tensor of ``device_type``
    (``meta``: the stand-in for CUDA; ``cpu`` counts a real CPU run).

    With ``shadows`` (for meta tensors), small device tensors carry real CPU values for host reads.
    ``run_triton``: Triton launches of custom ops run after being recorded (a real interpreted run).
    """

    def __init__(self, device_type: str = "meta", shadows: bool = True, run_triton: bool = False) -> None:
        super().__init__()
        self.device_type = device_type
        self.use_shadows = shadows
        self.run_triton = run_triton
        self.counting = True
        self.ops: dict[str, OpStats] = {}
        self.host_reads = 0
        self.host_reads_guessed = 0
        self.host_reads_stale = 0
        self._prefix: list[str] = []

    # -------------------------------------------------------------- totals
    @property
    def launches(self) -> int:
        return sum(s.launches for s in self.ops.values())

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.ops.values())

    @property
    def bytes_written(self) -> int:
        return sum(s.bytes_written for s in self.ops.values())

    def top(self, key: str = "launches", n: int = 5) -> list[tuple[str, OpStats]]:
        """The ``n`` operators with the most ``launches`` or ``bytes`` (read + written)."""
        return sorted(self.ops.items(), key=lambda item: getattr(item[1], key), reverse=True)[:n]

    # -------------------------------------------------------------- recording
    def _on_device(self, tensors: Sequence[torch.Tensor]) -> bool:
        return any(t.device.type == self.device_type for t in tensors)

    def _record(
        self, name: str, launches: int, read: Sequence[torch.Tensor], written: Sequence[torch.Tensor]
    ) -> None:
        stats = self.ops.setdefault("/".join([*self._prefix, name]), OpStats())
        stats.calls += 1
        stats.launches += launches
        stats.bytes_read += sum(map(tensor_bytes, read))
        stats.bytes_written += sum(map(tensor_bytes, written))

    def _count_aten(
        self, name: str, args: tuple, out: Any, read: list[torch.Tensor], written: list[torch.Tensor]
    ) -> None:
        if name in NO_KERNEL_OPS:
            return
        if not self._on_device(read + written) or not any(t.numel() for t in written):
            return  # host work, or nothing written: no kernel
        launches = foreach_launches(args, out) if name.startswith("aten::_foreach_") else 1
        self._record(name.removeprefix("aten::"), launches, read, written)

    # -------------------------------------------------------------- shadows (real values of small tensors)
    def _shadow(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return _cpu_device(x)
        if x.device.type != "meta":
            return x
        return getattr(x, _SHADOW, None)

    def _propagate(self, func: Any, args: tuple, kwargs: dict, out: Any, written: list[torch.Tensor]) -> None:
        """The real values of the small meta tensors ``func`` writes, from the values of its inputs; a
        tensor updated in place from inputs without values keeps its value from before, marked stale."""
        written = [t for t in written if t.device.type == "meta"]
        if not written:
            return
        if (
            func._schema.name not in _ALLOCATIONS
            and all(t.numel() <= SHADOW_NUMEL for t in written)
            and all(self._shadow(t) is not None for t in _tensors((args, kwargs)))
        ):
            shadow_args, shadow_kwargs = _map(self._shadow, (args, kwargs))
            # a device generator draws these values in a real run: leave the CPU generator's state alone
            seeded = torch.Tag.nondeterministic_seeded in func.tags
            rng = torch.random.fork_rng(devices=[]) if seeded else contextlib.nullcontext()
            try:
                with _disable_current_modes(), rng:
                    real = func(*shadow_args, **shadow_kwargs)  # mutated arguments: their shadows, in place
            except Exception:  # no CPU value for this one: reads of it are guessed
                pass
            else:
                stale = any(_is_stale(t) for t in _tensors((args, kwargs)))
                for fake, value in zip(_tensors(out), _tensors(real)):
                    if fake.device.type == "meta":
                        setattr(fake, _SHADOW, value)
                for t in written:
                    setattr(t, _STALE, stale)
                return
        for t in written:  # updated in place from unknown values: keep the value before, as stale
            if _SHADOW in t.__dict__:
                setattr(t, _STALE, True)

    def _host_read(self, func: Any, args: tuple) -> Any:
        t = args[0]
        shadow = self._shadow(t)
        counted = self.counting and t.device.type == "meta"
        self.host_reads += counted
        self.host_reads_stale += counted and shadow is not None and _is_stale(t)
        if shadow is not None:
            with _disable_current_modes():
                return func(shadow)
        self.host_reads_guessed += counted
        if t.dtype == torch.bool:
            return True
        return 1.0 if t.is_floating_point() else 1

    def _dynamic_shape(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """An operator whose output shape depends on values (``nonzero``): from the inputs' shadows."""
        shadow_args, shadow_kwargs = _map(self._shadow, (args, kwargs))
        if any(self._shadow(t) is None for t in _tensors((args, kwargs))):
            return func(*args, **kwargs)  # raises: the shape needs values we do not have
        with _disable_current_modes():
            real = func(*shadow_args, **shadow_kwargs)
        out = _map(
            lambda r: (
                torch.empty_strided(r.shape, r.stride(), dtype=r.dtype, device="meta")
                if isinstance(r, torch.Tensor)
                else r
            ),
            real,
        )
        for fake, value in zip(_tensors(out), _tensors(real)):
            setattr(fake, _SHADOW, value)
        return out

    def _device_to_host(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """A copy of a meta tensor to the CPU (``.cpu()``, ``.tolist()`` of a device tensor): from its
        shadow, else zeros (a guessed read)."""
        self.host_reads += self.counting
        if any(self._shadow(t) is None for t in _tensors((args, kwargs))):
            self.host_reads_guessed += self.counting
            shadow_args, shadow_kwargs = _map(_zeros_for_meta, (args, kwargs))
        else:
            self.host_reads_stale += self.counting and any(_is_stale(t) for t in _tensors((args, kwargs)))
            shadow_args, shadow_kwargs = _map(self._shadow, (args, kwargs))
        if func._schema.name == "aten::copy_":  # into the real CPU tensor args[0]
            shadow_args = (args[0], *shadow_args[1:])
        with _disable_current_modes():
            return func(*shadow_args, **shadow_kwargs)

    def _mask_index(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """``x[mask]`` on meta: the boolean masks (from their shadows) as the integer indices they select."""
        indices = []
        for index in args[1]:
            if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                shadow = self._shadow(index)
                if shadow is None:
                    return func(*args, **kwargs)  # raises: the shape needs the mask's values
                for column in shadow.nonzero().unbind(1):
                    long_index = torch.empty(column.shape, dtype=torch.long, device=index.device)
                    setattr(long_index, _SHADOW, column)
                    indices.append(long_index)
            else:
                indices.append(index)
        return func(args[0], indices, *args[2:], **kwargs)

    # -------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("fastnas::"):
            return self._custom_op(func, name, args, kwargs)
        if self.use_shadows and name in _HOST_READS:
            return self._host_read(func, args)
        if _composite_implicit(func):  # reaches a mode only below autograd (custom-op bodies): as above it
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        meta = self.use_shadows and any(t.device.type == "meta" for t in _tensors(args))
        if meta and name in _DYNAMIC_SHAPE_OPS:
            out = self._dynamic_shape(func, args, kwargs)
        elif meta and name == "aten::index" and any(t.dtype == torch.bool for t in _tensors(args[1])):
            out = self._mask_index(func, args, kwargs)
        elif meta and _to_host(func, args, kwargs):
            out = self._device_to_host(func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        if self.counting or self.use_shadows:
            read, written = read_and_written(func, args, kwargs, out)
            if self.counting:
                self._count_aten(name, args, out, read, written)
            if self.use_shadows:
                self._propagate(func, args, kwargs, out, written)
        return out

    def _custom_op(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        short = name.removeprefix("fastnas::")
        read = _unique(_tensors((args, kwargs)))
        opdef = _python_custom_op(name)
        if opdef is None:  # a C++ operator: its registered kernel (Meta, CPU)
            out = func(*args, **kwargs)
            written = _unique(_tensors(out))
            if self.counting and self._on_device(read + written):
                self._record(short, cxx_op_launches(short, args), read, written)
            return out
        # a Python custom op: its body, here, its Triton launches recorded (and skipped)
        self._prefix.append(short)
        try:
            with record_triton_launches(run=self.run_triton) as kernels, self:
                out = opdef._init_fn(*args, **kwargs)
        finally:
            self._prefix.pop()
        if self.counting and self._on_device(read):  # zero kernels: a body of ATen operators only
            written = _unique(_tensors(out)) if kernels else []
            self._record(short, len(kernels), read if kernels else [], written)
        if not self.run_triton:  # what the skipped kernels would have written is unknown
            _forget_values(_tensors(out))
        return out


# ----------------------------------------------------------------------------- CUDA dispatch on meta
@contextlib.contextmanager
def emulate_cuda_dispatch(device_type: str = "meta", gpu_tiling: bool = True) -> Iterator[None]:
    """Inside the block, tensors of ``device_type`` (``meta``; ``cpu`` to check a count against a real CPU
    run) take the branches CUDA tensors take:

    - the Triton kernels support them (``triton_supports``; the fused model paths follow);
    - autocast queries and regions for ``meta`` are those of ``cuda`` (the fast executor opens one; CPU
      autocast exists as it is);
    - ``F.dropout`` in training is ATen's fused ``native_dropout`` (its CUDA path; not on meta/CPU);
    - ``clip_grad_norm_`` takes its ``foreach`` path (as for CUDA gradients);
    - with ``gpu_tiling``, the kernel modules size their split reductions for a GPU, not the interpreter
      (only partial-sum buffer sizes depend on it).

    Optimisers default to ``foreach`` for CUDA parameters; :func:`count_search_step` sets it on them.
    """
    cuda = torch.device("cuda")
    with contextlib.ExitStack() as stack:
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith("fastnas.kernels"):
                continue
            supports = getattr(module, "triton_supports", None)
            if callable(supports):

                def as_cuda_device(device: torch.device, dtype: torch.dtype, _s: Callable = supports) -> bool:
                    return _s(cuda if device.type == device_type else device, dtype)

                stack.enter_context(mock.patch.object(module, "triton_supports", as_cuda_device))
            if gpu_tiling and getattr(module, "TRITON_INTERPRET", None) is True:
                stack.enter_context(mock.patch.object(module, "TRITON_INTERPRET", False))

        def as_cuda(fn: Callable) -> Callable:
            def wrapped(device_type: Any = "cuda", *args: Any, **kwargs: Any) -> Any:
                if device_type == "meta":
                    device_type = "cuda"
                return fn(device_type, *args, **kwargs)

            return wrapped

        for name in ("autocast", "is_autocast_enabled", "get_autocast_dtype"):
            stack.enter_context(mock.patch.object(torch, name, as_cuda(getattr(torch, name))))

        dropout = F.dropout

        def fused_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):
            if x.device.type == device_type and training and 0 < p < 1 and x.numel() > 0 and not inplace:
                return torch.ops.aten.native_dropout(x, p, True)[0]
            return dropout(x, p, training, inplace)

        stack.enter_context(mock.patch.object(F, "dropout", fused_dropout))

        clip = importlib.import_module("torch.nn.utils.clip_grad")
        has_foreach = clip._has_foreach_support

        def foreach_as_cuda(tensors: list[torch.Tensor | None], device: torch.device) -> bool:
            return device.type == device_type or has_foreach(tensors, device)

        stack.enter_context(mock.patch.object(clip, "_has_foreach_support", foreach_as_cuda))
        yield


# ----------------------------------------------------------------------------- the iteration
def _build_on_meta(build: Callable[..., SearchModel]) -> Callable[..., SearchModel]:
    """``SearchModel.build``, then moved to the meta device, its small parameters and buffers keeping their
    real values as shadows (``Module.to`` replaces tensors' data in place: values cannot follow)."""

    def build_meta(*args: Any, **kwargs: Any) -> SearchModel:
        model = build(*args, **kwargs)
        real = {name: t.detach().clone() for name, t in _named_tensors(model)}
        model.to("meta")
        for name, t in _named_tensors(model):
            if t.numel() <= SHADOW_NUMEL:
                setattr(t, _SHADOW, real[name])
        return model

    return build_meta


@contextlib.contextmanager
def _literals_keep_values() -> Iterator[None]:
    """``torch.tensor(data, device="meta")`` made on the CPU, then moved: the move is an operator the
    counter sees (a host-to-device copy), and the meta tensor keeps the data as its shadow."""
    literal = torch.tensor

    def tensor(
        data: Any,
        dtype: torch.dtype | None = None,
        device: Any = None,
        requires_grad: bool = False,
        pin_memory: bool = False,
    ) -> torch.Tensor:
        if device is None or torch.device(device).type != "meta":
            return literal(
                data, dtype=dtype, device=device, requires_grad=requires_grad, pin_memory=pin_memory
            )
        return literal(data, dtype=dtype, pin_memory=pin_memory).to(device).requires_grad_(requires_grad)

    with mock.patch.object(torch, "tensor", tensor):
        yield


def _named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, module in model.named_modules(remove_duplicate=False):
        for kind in (module._parameters, module._buffers):
            for name, t in kind.items():
                if t is not None:
                    yield f"{prefix}.{name}", t


def applies(method: str, order: int, executor: str) -> str | None:
    """Why the case (method, order, executor) does not exist (an ``n/a`` row), or None."""
    if order != 1 and not takes_order(method):
        return f"{method} has first-order architecture steps only"
    if executor == "fast" and method.startswith("entrannas"):
        return "the fast executor applies to DARTS-space supernets only"
    return None


def method_family(method: str) -> str:
    """``sparse`` for the methods that run a sampled active set each step (EDAS, DDSAS), else ``dense``."""
    algorithm = get_method(method).algorithm
    return "sparse" if algorithm.active_set is not SearchAlgorithm.active_set else "dense"


class SavedForBackward:
    """Bytes of the distinct storages autograd saves for backward (``saved_tensors_hooks``, storage
    identity), peak over the forwards of an iteration: a GPU-free proxy of peak activation memory. A pack
    after an unpack starts a new graph (the previous one is freed by its backward)."""

    def __init__(self) -> None:
        self.peak = 0
        self._live: dict[int, int] = {}
        self._total = 0
        self._unpacked = False
        self._hooks: Any = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._unpacked:  # a new forward after a backward
            self._live, self._total, self._unpacked = {}, 0, False
        if tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self._live:
                self._live[key] = storage.nbytes()
                self._total += self._live[key]
                self.peak = max(self.peak, self._total)
        return tensor

    def _unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._unpacked = True
        return tensor

    def __enter__(self) -> SavedForBackward:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _host_time(step: Callable[[], Any], repeats: int = 3) -> tuple[float, str]:
    """Milliseconds to issue one iteration's operators on meta tensors with no dispatch mode (no counting):
    the host-side cost per iteration that CUDA graphs remove (best of ``repeats``). NaN, with the reason,
    for a step that reads device values on the host (meta tensors hold none without the counter)."""
    times = []
    try:
        with _disable_current_modes():
            for _ in range(repeats):
                started = time.perf_counter()
                step()
                times.append(time.perf_counter() - started)
    except (NotImplementedError, RuntimeError) as exc:
        return math.nan, f"no host time: the step reads device values on the host ({type(exc).__name__})"
    return min(times) * 1e3, ""


def count_search_step(
    method: str = "darts",
    order: int = 1,
    executor: str = "reference",
    batch_size: int = 64,
    C: int = 16,
    layers: int = 8,
    image_size: int = 32,
    seed: int = 0,
    device: str = "meta",
    gpu_tiling: bool = True,
    warmup: int = 1,
    run_triton: bool = False,
    host_repeats: int = 1,
    precision: str = "fp32",
) -> tuple[dict[str, Any], LaunchCounter]:
    """Launches and bytes of one search iteration with ``executor`` (``plain``: the reference executor with
    every op forced to PyTorch; ``reference``; ``fast``), as a GPU would run it (``device="meta"``). The
    counted iteration follows ``warmup`` uncounted ones: the first iteration also creates the optimisers'
    state (SGD's momentum buffers, Adam's moments), which the steady state does not.

    ``device="cpu"`` counts a real CPU run with the same dispatch instead, to check the meta count: the
    Triton launches are skipped (their outputs hold garbage), or with ``run_triton`` run interpreted (this
    needs ``TRITON_INTERPRET=1`` before the kernels were imported, and minutes). Returns the result row and
    the counter (per-operator records). ``host_repeats`` uncounted iterations after it time the host side
    (:func:`_host_time`; 0: none). ``precision`` ``bf16``/``fp16``: autocast has no meta form, so the count
    is of a real CPU run under CPU autocast (same CUDA dispatch, Triton launches recorded and skipped; the
    fast executor casts its cells' inputs itself, so the cells are as on a GPU; CPU autocast's op list
    decides the casts of the stem, preprocessing and classifier) at whatever size was asked: keep it small.
    """
    if precision != "fp32" and device == "meta":
        device = "cpu"  # autocast has no meta form: a real CPU run under CPU autocast (see ``precision``)
    meta = device == "meta"
    counter = LaunchCounter(device, shadows=meta, run_triton=run_triton)
    plain = executor == "plain"
    with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack.enter_context(emulate_cuda_dispatch(device, gpu_tiling))
        if meta:
            stack.enter_context(mock.patch.object(SearchModel, "build", _build_on_meta(SearchModel.build)))
            stack.enter_context(_literals_keep_values())
        # the fast executor warns once per process why a cell runs the reference loop: every count
        stack.enter_context(mock.patch.object(fast_executor, "_FALLBACKS_SEEN", set()))
        if not meta:
            from fastnas.kernels._common import kernels_in_cpu_models

            stack.enter_context(kernels_in_cpu_models())
        stack.enter_context(counter)
        counter.counting = False
        step = build_search_step(
            batch_size,
            torch.device(device),
            precision,
            C=C,
            layers=layers,
            image_size=image_size,
            order=order,
            executor="reference" if plain else executor,
            method=method,
            reference_ops=plain,
            seed=seed,
        )
        for optimizer in (step.weight_optimizer, step.arch_optimizer):  # the CUDA default
            for group in optimizer.param_groups:
                group["foreach"] = True
        for _ in range(warmup):  # the first iteration also creates the optimiser state
            step()
        counter.counting = True
        with SavedForBackward() as saved:
            step()
        counter.counting = False
        host_ms, host_note = _host_time(step, host_repeats) if meta and host_repeats else (math.nan, "")
    fallbacks = sorted(
        {str(w.message).removeprefix("fast executor: ") for w in caught if "fast executor" in str(w.message)}
    )
    row: dict[str, Any] = {
        "benchmark": "launches",
        "method": method,
        "order": order,
        "executor": executor,
        "batch_size": batch_size,
        "C": C,
        "layers": layers,
        "image_size": image_size,
        "precision": precision,
        "launches": counter.launches,
        "bytes_read": counter.bytes_read,
        "bytes_written": counter.bytes_written,
        "host_ms": host_ms,
        "saved_bytes": saved.peak,
        "saved_mb": saved.peak / 1e6,
        "family": method_family(method),
        "host_reads": counter.host_reads,
        "host_reads_guessed": counter.host_reads_guessed,
        "host_reads_stale": counter.host_reads_stale,
        "top_launches": [[k, s.launches, s.bytes] for k, s in counter.top("launches")],
        "top_bytes": [[k, s.launches, s.bytes] for k, s in counter.top("bytes")],
        "note": "; ".join([*fallbacks, *([host_note] if host_note else [])]),
    }
    row.update(floors(row))
    return row, counter


def floors(row: dict[str, Any]) -> dict[str, float]:
    """Megabytes moved, the bandwidth floor (bytes / 3 TB/s) and the launch floor (4 us per launch), in
    microseconds."""
    total = row["bytes_read"] + row["bytes_written"]
    return {
        "mb_read": row["bytes_read"] / 1e6,
        "mb_written": row["bytes_written"] / 1e6,
        "bandwidth_us": total / BANDWIDTH_BYTES_PER_S * 1e6,
        "launch_us": row["launches"] * LAUNCH_US,
    }


# ----------------------------------------------------------------------------- the section
def launch_executors() -> tuple[str, ...]:
    """The executor cases: ``plain``, ``reference`` (the ``fast`` rows' ratios are to it), then every
    other registered cell executor except ``auto`` (the fast executor on CUDA, which the count emulates)."""
    others = (name for name in executor_names() if name not in ("reference", AUTO))  # auto = fast on CUDA
    return ("plain", "reference", *others)


def add_launches_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the section (by default every registered method and executor); the shape comes from the
    shared ``--C``, ``--layers``, ``--image-size``, first ``--batch-sizes`` entry and ``--seed`` of
    ``benchmarks/run.py``."""
    group = parser.add_argument_group("launches (kernel launches and bytes of a search step, counted on CPU)")
    group.add_argument("--launch-methods", nargs="+", default=list(method_names()), metavar="METHOD")
    group.add_argument("--launch-orders", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    executors = launch_executors()
    group.add_argument("--launch-executors", nargs="+", default=list(executors), choices=executors)
    group.add_argument(
        "--launch-warmup",
        type=int,
        default=1,
        metavar="N",
        help="uncounted iterations first (the first one also creates the optimiser state; default 1)",
    )
    group.add_argument(
        "--launch-host-repeats",
        type=int,
        default=1,
        metavar="N",
        help="iterations timed for the host-ms column, best of N (0 = no host time; default 1)",
    )


def launches_rows(args: argparse.Namespace) -> Iterator[Row]:
    """One row per (method, order, executor); ``fast`` rows carry their ratios to ``reference``."""
    shape = {
        "batch_size": args.batch_sizes[0],
        "C": args.C,
        "layers": args.layers,
        "image_size": args.image_size,
        "seed": args.seed,
        "warmup": getattr(args, "launch_warmup", 1),
        "host_repeats": getattr(args, "launch_host_repeats", 1),
    }
    for method in args.launch_methods:
        for order in args.launch_orders:
            reference: dict[str, Any] | None = None
            plain: dict[str, Any] | None = None
            for executor in args.launch_executors:
                case = {"benchmark": "launches", "method": method, "order": order, "executor": executor}
                reason = applies(method, order, executor)
                if reason:
                    yield {**case, "status": "n/a", "note": reason}
                    continue
                progress(f"launches: {case}")
                started = time.perf_counter()
                try:
                    row = {**count_search_step(method, order, executor, **shape)[0], "status": "ok"}
                except ConfigError as exc:  # the method refuses the case (e.g. an executor it does not run)
                    yield {**case, "status": "n/a", "note": str(exc)}
                    continue
                except Exception as exc:  # keep the grid going; the exit status reports it
                    traceback.print_exc()
                    yield {**case, "status": "error", "note": f"{type(exc).__name__}: {exc}"}
                    continue
                row["count_s"] = time.perf_counter() - started
                if executor == "plain":
                    plain = row
                elif plain is not None:
                    row.update(plain_ratios(row, plain))
                if executor == "reference":
                    reference = row
                elif executor == "fast" and reference is not None:
                    row["launch_ratio"] = row["launches"] / reference["launches"]
                    ref_bytes = reference["bytes_read"] + reference["bytes_written"]
                    row["byte_ratio"] = (row["bytes_read"] + row["bytes_written"]) / ref_bytes
                yield row


def plain_ratios(row: dict[str, Any], plain: dict[str, Any]) -> dict[str, float]:
    """Launches, bytes and saved-for-backward bytes of ``row`` over the plain loop's (the work floor)."""
    moved = row["bytes_read"] + row["bytes_written"]
    return {
        "plain_launch_ratio": row["launches"] / plain["launches"],
        "plain_byte_ratio": moved / (plain["bytes_read"] + plain["bytes_written"]),
        "plain_saved_ratio": row["saved_bytes"] / plain["saved_bytes"] if plain["saved_bytes"] else math.nan,
    }


def _op_list(entries: list[list[Any]], key: str) -> str:
    if key == "launches":
        return ", ".join(f"`{name}` {launches}" for name, launches, _ in entries)
    return ", ".join(f"`{name}` {nbytes / 1e6:.0f} MB" for name, _, nbytes in entries)


def launches_footer(rows: list[dict[str, Any]]) -> list[str]:
    """The goals of the fast executor, what dominates DARTS' first-order step, and how it was counted."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return []
    r0 = ok[0]
    lines = [
        f"Counted on the CPU (meta tensors, CUDA dispatch emulated; `benchmarks/launches.py`): one search "
        f"iteration, fp32, C={r0['C']}, {r0['layers']} cells, batch {r0['batch_size']}, "
        f"{r0['image_size']}x{r0['image_size']}, 10 classes. MB = 10^6 bytes. Bandwidth floor = bytes read + "
        f"written at {BANDWIDTH_BYTES_PER_S / 1e12:.0f} TB/s; launch floor = {LAUNCH_US:.0f} us per launch. "
        "`launches / ref`, `bytes / ref`: the fast executor over the reference executor.",
    ]
    ratios = [r for r in ok if "launch_ratio" in r]
    if ratios:
        lines.append("")
        lines.append(
            f"Goals (fast <= {GOAL_LAUNCH_RATIO:g} x the reference executor's launches, <= "
            f"{GOAL_BYTE_RATIO:g} x its bytes):"
        )
        for r in ratios:
            launch_ok = r["launch_ratio"] <= GOAL_LAUNCH_RATIO
            byte_ok = r["byte_ratio"] <= GOAL_BYTE_RATIO
            lines.append(
                f"- {r['method']} order {r['order']}: launches x{r['launch_ratio']:.3f} "
                f"({'met' if launch_ok else 'not met'}), bytes x{r['byte_ratio']:.3f} "
                f"({'met' if byte_ok else 'not met'})"
            )
    floors_ = [r for r in ok if "plain_launch_ratio" in r and r["executor"] != "reference"]
    if floors_:
        lines.append("")
        lines.append(
            "Work floor against the plain loop (launches, bytes, saved for backward): dense methods <= "
            + ", ".join(f"{g:g}x" for g in FLOOR_GOALS["dense"])
            + "; sparse (EDAS, DDSAS) <= "
            + ", ".join(f"{g:g}x" for g in FLOOR_GOALS["sparse"])
            + ":"
        )
        for r in floors_:
            goals = FLOOR_GOALS[r["family"]]
            measured = (r["plain_launch_ratio"], r["plain_byte_ratio"], r["plain_saved_ratio"])
            parts = [
                f"{what} x{value:.3f} ({'met' if value <= goal else 'not met'})"
                for what, value, goal in zip(("launches", "bytes", "saved"), measured, goals, strict=True)
            ]
            lines.append(f"- {r['method']} order {r['order']} `{r['executor']}`: " + ", ".join(parts))
    for executor in ("reference", "fast"):
        top = next(
            (x for x in ok if x["method"] == "darts" and x["order"] == 1 and x["executor"] == executor), None
        )
        if top is None:
            continue
        launches = _op_list(top["top_launches"], "launches")
        lines.append("")
        lines.append(f"DARTS first order, `{executor}`: top 5 by launches: {launches}.")
        lines.append(f"Top 5 by bytes: {_op_list(top['top_bytes'], 'bytes')}.")
    reads = [r for r in ok if r["host_reads_guessed"] or r["host_reads_stale"]]
    if reads:
        lines.append("")
        lines.append(
            "Host reads of device values the count could not know (`guessed`: answered 1 or zeros, e.g. "
            "second order's finite-difference `||v||`; `stale`: the value before an update computed from "
            "activations, e.g. EnTranNAS' selection read after the Adam step): "
            + ", ".join(
                f"{r['method']} o{r['order']} {r['executor']} {r['host_reads_guessed']} guessed / "
                f"{r['host_reads_stale']} stale"
                for r in reads
            )
            + "."
        )
    return lines


def launches_section() -> Section:
    """The ``launches`` section of ``benchmarks/run.py``."""
    return Section(
        name="launches",
        title="Launches and bytes of a search step (CPU count)",
        columns=(
            Column("method"),
            Column("order"),
            Column("executor"),
            Column("launches"),
            Column("mb_read", "MB read", "{:.0f}"),
            Column("mb_written", "MB written", "{:.0f}"),
            Column("bandwidth_us", "bandwidth floor us", "{:.0f}"),
            Column("launch_us", "launch floor us", "{:.0f}"),
            Column("saved_mb", "MB saved for backward", "{:.0f}"),
            Column("host_ms", "host ms", "{:.0f}"),
            Column("plain_launch_ratio", "launches / plain", "{:.3f}"),
            Column("plain_byte_ratio", "bytes / plain", "{:.3f}"),
            Column("plain_saved_ratio", "saved / plain", "{:.3f}"),
            Column("launch_ratio", "launches / ref", "{:.3f}"),
            Column("byte_ratio", "bytes / ref", "{:.3f}"),
            Column("note"),
        ),
        rows=launches_rows,
        add_arguments=add_launches_arguments,
        footer=launches_footer,
        default=False,  # ~30 supernet iterations counted: ask for it with --only launches
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the section alone and print its table (``--json PATH`` writes the rows too)."""
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.launches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64], metavar="N")
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    add_launches_arguments(parser)
    args = parser.parse_args(argv)
    rows = list(launches_rows(args))
    print(section_markdown(launches_section(), rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.get("status") == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
