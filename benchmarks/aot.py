"""Ahead-of-time compilation of every Triton kernel of ``fastnas.kernels`` for real GPU targets, on a
machine without a GPU, and the resources the compiled kernels use.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` lowers a kernel to PTX and a cubin
with no GPU and no driver; ``cuobjdump --dump-resource-usage`` (shipped with Triton in
``triton/backends/nvidia/bin/``) then reads its registers, shared memory, stack and local memory (spills)
from the cubin. Which kernels, in which configurations (constexpr block sizes and flags, pointer dtypes,
the JIT's specialisations of the runtime arguments), is found out rather than written down:

1. :func:`trace_ops` runs a piece of model code (a search step of a supernet, a kernel benchmark case)
   under ``FakeTensorMode``, with the kernel dispatch of model code switched on as on a CUDA device, and
   logs every call of a ``fastnas::`` operator with its arguments' shapes, strides and dtypes; nothing is
   computed and nothing is allocated.
2. :func:`replay` calls each logged operator again on CPU tensors of the same layout, with every
   ``kernel[grid]`` launch of the kernel modules replaced by a recorder (:func:`record_launches`): the
   operator's own launcher picks the block sizes and flags, exactly as it would on a GPU (the modules'
   ``TRITON_INTERPRET`` switch is turned off meanwhile), and the recorder turns each launch into a
   :class:`KernelConfig` with the type and specialisation the Triton JIT would give every argument
   (:func:`specialize`). Autotuned and heuristic kernels expand to one configuration per ``triton.Config``.
3. :func:`compile_configs` compiles the configurations for the requested targets in worker processes
   (``python benchmarks/aot.py --worker ...``) that run without ``TRITON_INTERPRET``: under the
   interpreter ``@triton.jit`` makes ``InterpretedFunction`` objects that the compiler cannot lower, and
   helper functions called by a kernel are looked up in its module, so a fresh import is the only clean
   way to get real ``JITFunction`` objects. Triton's cache goes to a temporary directory that is deleted.

:func:`occupancy` estimates the blocks and warps per SM from registers per thread, threads per block and
shared memory per block, with the limits of sm_80 (A100) and sm_90 (H100/H200) in :data:`SM_LIMITS`, and
:func:`compile_cuda_source` does the same for the torch-free CUDA C++ kernels (``nvcc -cubin``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SM_LIMITS",
    "CompileResult",
    "CudaKernelResult",
    "KernelConfig",
    "OpCall",
    "SMLimits",
    "TensorSpec",
    "TraceError",
    "compile_configs",
    "compile_cuda_source",
    "cuobjdump_path",
    "kernel_modules",
    "launched_kernels",
    "nvcc_path",
    "occupancy",
    "parse_resource_usage",
    "record_launches",
    "replay",
    "specialize",
    "trace_ops",
]

PACKAGE = "fastnas.kernels"
_NOT_KERNEL_MODULES = frozenset({"_common"})
DEFAULT_ARCHS: tuple[int, ...] = (80, 90)
RESERVED_SMEM_PER_BLOCK = 1024
"""Shared memory the CUDA runtime reserves for every block on compute capability 8.0 and newer. sm_90
cubins of kernels that use shared memory list it in their static shared memory (``_has_reserve``);
it is counted once either way (:attr:`CompileResult.smem_kernel` leaves it out,
:attr:`CompileResult.smem_per_block` adds it)."""

# --------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------


def _triton_bin(name: str) -> str | None:
    try:
        import triton
    except Exception:  # pragma: no cover - depends on the environment
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def cuobjdump_path() -> str | None:
    """``cuobjdump`` shipped with Triton (``triton/backends/nvidia/bin``), else the one on ``PATH``."""
    return _triton_bin("cuobjdump") or shutil.which("cuobjdump")


def nvcc_path() -> str | None:
    """``nvcc`` of ``$CUDA_HOME``, ``/usr/local/cuda`` or ``PATH``; None when there is none."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").is_file():
            return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


# --------------------------------------------------------------------------------------------------
# Kernel modules and their kernels
# --------------------------------------------------------------------------------------------------


def kernel_modules() -> list[str]:
    """Names of the modules of ``fastnas.kernels`` that define Triton kernels (every module but the shared
    helpers)."""
    package = importlib.import_module(PACKAGE)
    names = [
        f"{PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if info.name not in _NOT_KERNEL_MODULES
    ]
    return sorted(name for name in names if launched_kernels(importlib.import_module(name)))


def _is_triton_object(obj: object) -> bool:
    """A ``@triton.jit`` function (compiled or interpreted), or an autotuner / heuristics wrapper of one."""
    try:
        from triton.runtime.jit import KernelInterface
    except Exception:  # pragma: no cover - no triton
        return False
    return isinstance(obj, KernelInterface)


def launched_kernels(module: Any) -> list[str]:
    """The module's Triton kernels that its host code launches (``name[grid](...)``), in source order;
    ``@triton.jit`` helpers called only from kernels are left out."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):  # pragma: no cover - no source
        return []
    names = [name for name, obj in vars(module).items() if _is_triton_object(obj)]
    launched = [n for n in names if re.search(rf"\b{re.escape(n)}\[", source)]
    return sorted(launched, key=lambda n: source.find(f"def {n}("))


def _python_function(obj: Any) -> Callable[..., Any]:
    """The plain Python function under a ``JITFunction``/``InterpretedFunction``/``Autotuner`` chain."""
    seen = 0
    while not inspect.isfunction(obj):
        obj = obj.fn
        seen += 1
        if seen > 8:  # pragma: no cover - defensive
            raise TypeError("cannot find the Python function of a Triton kernel object")
    return obj


def _innermost_jit(obj: Any) -> Any:
    """The ``@triton.jit`` object under autotuner / heuristics wrappers."""
    while not inspect.isfunction(getattr(obj, "fn", None)):
        obj = obj.fn
    return obj


# --------------------------------------------------------------------------------------------------
# Configurations and the JIT's specialisation of launch arguments
# --------------------------------------------------------------------------------------------------

_TRITON_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}
_NO_VALUE = object()


def specialize(value: object, *, specialize_int: bool = True, align: bool = True) -> tuple[str, Any, bool]:
    """``(type, constexpr value, divisible by 16)`` that Triton's JIT (3.x) gives a launch argument.

    The rules of ``triton.runtime.jit`` (``specialize_impl``): ``None`` and an int equal to 1 become
    constexprs; other ints are ``i32`` (``i64``/``u64`` when out of range) and marked divisible by 16 when
    they are; floats ``fp32``, bools ``u1``; tensors are pointers to their dtype, marked divisible by 16
    when their address is (the data pointer of a CPU stand-in has the same offset within 16 bytes as on
    the GPU: both allocators align to at least 64 bytes). ``specialize_int=False`` and ``align=False``
    mirror ``do_not_specialize`` and ``do_not_specialize_on_alignment``. The constexpr value is
    :data:`_NO_VALUE` for a runtime argument.
    """
    if value is None:
        return "constexpr", None, False
    if isinstance(value, bool):
        return "u1", _NO_VALUE, False
    if isinstance(value, int):
        if specialize_int and value == 1:
            return "constexpr", 1, False
        if -(2**31) <= value < 2**31:
            kind = "i32"
        elif value >= 2**63:
            kind = "u64"
        else:
            kind = "i64"
        return kind, _NO_VALUE, specialize_int and align and value % 16 == 0
    if isinstance(value, float):
        return "fp32", _NO_VALUE, False
    if isinstance(value, torch.Tensor):
        if value.dtype not in _TRITON_DTYPES:
            raise TypeError(f"no Triton pointer type for a {value.dtype} tensor")
        return "*" + _TRITON_DTYPES[value.dtype], _NO_VALUE, align and value.data_ptr() % 16 == 0
    raise TypeError(f"cannot specialise a launch argument of type {type(value).__name__}")


def _plain(value: object) -> object:
    """A constexpr value as JSON (bool, int, float, str or None)."""
    value = getattr(value, "value", value)  # tl.constexpr(...)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"unsupported constexpr value {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class KernelConfig:
    """One compilation of one kernel: the types of its parameters, its constexpr values, the parameters
    the JIT marks divisible by 16 and the compile options of the launch (``num_warps``, ...; empty: the
    backend's defaults, which is what a launch without them gets)."""

    module: str
    kernel: str
    params: tuple[str, ...]
    types: tuple[str, ...]
    """Triton type of each parameter (``*fp32``, ``i32``, ...), ``constexpr`` for constexprs."""
    constexprs: tuple[tuple[str, Any], ...]
    """Values of the constexpr parameters, declared (``tl.constexpr``) or specialised (an int 1, None)."""
    declared: tuple[str, ...]
    """The parameters declared ``tl.constexpr`` (the block sizes and flags the launcher chooses)."""
    aligned: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """``module.kernel`` without the package (``mixed_bn_sum._forward_kernel``)."""
        return f"{self.module.rsplit('.', 1)[-1]}.{self.kernel}"

    def dtypes(self) -> str:
        """The element types of the pointer parameters, in order of first use (``bf16+fp32``)."""
        seen: list[str] = []
        for kind in self.types:
            if kind.startswith("*") and kind[1:] not in seen:
                seen.append(kind[1:])
        return "+".join(seen)

    def label(self) -> str:
        """Pointer dtypes and the declared constexprs (``fp32 HAS_SKIP=1 BLOCK_K=8``)."""
        values = dict(self.constexprs)
        parts = [
            f"{n}={int(v) if isinstance(v, bool) else v}" for n, v in values.items() if n in self.declared
        ]
        opts = [f"{k}={v}" for k, v in self.options]
        return " ".join([self.dtypes(), *parts, *opts])

    def specialised(self) -> str:
        """The JIT specialisations beyond the declared constexprs: ints equal to 1 and unaligned pointers."""
        ones = [n for n, _ in self.constexprs if n not in self.declared]
        unaligned = [
            n
            for n, kind in zip(self.params, self.types, strict=True)
            if kind.startswith("*") and n not in self.aligned
        ]
        text = []
        if ones:
            text.append("=1: " + ",".join(ones))
        if unaligned:
            text.append("unaligned: " + ",".join(unaligned))
        return "; ".join(text)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelConfig:
        return cls(
            module=data["module"],
            kernel=data["kernel"],
            params=tuple(data["params"]),
            types=tuple(data["types"]),
            constexprs=tuple((n, v) for n, v in data["constexprs"]),
            declared=tuple(data["declared"]),
            aligned=tuple(data["aligned"]),
            options=tuple((k, v) for k, v in data["options"]),
        )


# --------------------------------------------------------------------------------------------------
# Launch recording
# --------------------------------------------------------------------------------------------------


def _is_constexpr_param(param: inspect.Parameter) -> bool:
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return False
    return "constexpr" in (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))


def _jit_setting(obj: Any, name: str) -> list[Any]:
    value = getattr(obj, name, None)
    if value is None:  # InterpretedFunction keeps the decorator's arguments in .kwargs
        value = getattr(obj, "kwargs", {}).get(name)
    return list(value or [])


def _expand(obj: Any, bound: dict[str, Any], options: dict[str, Any]) -> list[tuple[dict[str, Any], dict]]:
    """Autotuner: one launch per ``triton.Config`` (its kwargs and compile options); heuristics: the
    values they compute from the arguments; a ``@triton.jit`` function: the launch itself."""
    from triton.runtime.autotuner import Autotuner, Heuristics

    if isinstance(obj, Autotuner):
        out = []
        for config in obj.configs:
            opts = dict(options)
            for key in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
                value = getattr(config, key, None)
                if value is not None and not (key == "num_ctas" and value == 1):
                    opts[key] = value
            out += _expand(obj.fn, {**bound, **config.kwargs}, opts)
        return out
    if isinstance(obj, Heuristics):
        values = dict(bound)
        for name, rule in obj.values.items():
            values[name] = rule(values)
        return _expand(obj.fn, values, options)
    return [(bound, options)]


def configs_of_launch(
    module: str, kernel: str, obj: Any, args: Sequence[Any], kwargs: dict[str, Any]
) -> list[KernelConfig]:
    """The :class:`KernelConfig` (several for an autotuned kernel) of ``obj[grid](*args, **kwargs)``."""
    fn = _python_function(obj)
    params = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in params]
    options = {k: v for k, v in kwargs.items() if k not in names}
    bound = dict(zip(names, args, strict=False))  # the rest may come as keywords
    bound.update({k: v for k, v in kwargs.items() if k in names})
    jit = _innermost_jit(obj)
    no_spec = {names[i] if isinstance(i, int) else i for i in _jit_setting(jit, "do_not_specialize")}
    no_align = {
        names[i] if isinstance(i, int) else i for i in _jit_setting(jit, "do_not_specialize_on_alignment")
    }
    declared = tuple(p.name for p in params if _is_constexpr_param(p))
    configs = []
    for values, opts in _expand(obj, bound, options):
        types, constexprs, aligned = [], [], []
        for p in params:
            if p.name not in values:
                if p.default is inspect.Parameter.empty:
                    raise TypeError(f"{module}.{kernel}: launch without argument {p.name!r}")
                values[p.name] = p.default
            value = values[p.name]
            if p.name in declared:
                types.append("constexpr")
                constexprs.append((p.name, _plain(value)))
                continue
            kind, const, is_aligned = specialize(
                value, specialize_int=p.name not in no_spec, align=p.name not in no_align
            )
            types.append(kind)
            if const is not _NO_VALUE:
                constexprs.append((p.name, const))
            if is_aligned:
                aligned.append(p.name)
        configs.append(
            KernelConfig(
                module=module,
                kernel=kernel,
                params=tuple(names),
                types=tuple(types),
                constexprs=tuple(constexprs),
                declared=declared,
                aligned=tuple(aligned),
                options=tuple(sorted((k, _plain(v)) for k, v in opts.items())),
            )
        )
    return configs


class LaunchRecorder:
    """Stands in for a kernel in its module: ``recorder[grid](*args)`` (and ``recorder.run``) record the
    launch's configurations into ``sink`` instead of running anything."""

    def __init__(self, module: str, kernel: str, obj: Any, sink: list[KernelConfig]) -> None:
        self.module, self.kernel, self.obj, self.sink = module, kernel, obj, sink

    def __getitem__(self, grid: object) -> Callable[..., None]:
        return self._record

    def run(self, *args: Any, grid: object = None, warmup: bool = False, **kwargs: Any) -> None:
        self._record(*args, **kwargs)

    def _record(self, *args: Any, **kwargs: Any) -> None:
        self.sink.extend(configs_of_launch(self.module, self.kernel, self.obj, args, kwargs))


@contextlib.contextmanager
def record_launches(modules: Iterable[str] | None = None) -> Iterator[list[KernelConfig]]:
    """Inside the block every launched kernel of ``modules`` (default: all of :func:`kernel_modules`) is a
    :class:`LaunchRecorder`; the modules' ``TRITON_INTERPRET`` is False, so that their launchers choose what
    they choose on a GPU, and their ``triton_supports`` accepts tensors of any device (CPU and meta
    stand-ins take the kernel path). Yields the list the launches are recorded into; everything is
    restored on exit."""
    from fastnas.kernels import _common

    sink: list[KernelConfig] = []
    saved: list[tuple[Any, str, Any]] = [(_common, "TRITON_INTERPRET", _common.TRITON_INTERPRET)]

    def any_device(device: torch.device, dtype: torch.dtype) -> bool:
        return _common.HAS_TRITON and dtype in _common.KERNEL_DTYPES

    try:
        _common.TRITON_INTERPRET = True
        for name in modules if modules is not None else kernel_modules():
            module = importlib.import_module(name)
            for attr, value in (("TRITON_INTERPRET", False), ("triton_supports", any_device)):
                if hasattr(module, attr):
                    saved.append((module, attr, getattr(module, attr)))
                    setattr(module, attr, value)
            for kernel in launched_kernels(module):
                obj = getattr(module, kernel)
                saved.append((module, kernel, obj))
                setattr(module, kernel, LaunchRecorder(name, kernel, obj, sink))
        yield sink
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


# --------------------------------------------------------------------------------------------------
# Operator tracing (FakeTensorMode) and replay
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """Layout of a tensor argument: shape, strides, storage offset and dtype."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(tuple(t.shape), tuple(t.stride()), int(t.storage_offset()), str(t.dtype).split(".")[-1])

    def materialize(self, device: str = "meta") -> torch.Tensor:
        """A tensor of this layout without data (``meta``; uninitialised memory on ``cpu``)."""
        dtype = getattr(torch, self.dtype)
        if any(s == 0 for s in self.shape):
            return torch.empty(self.shape, dtype=dtype, device=device)
        extent = (
            self.offset + 1 + sum((s - 1) * abs(st) for s, st in zip(self.shape, self.stride, strict=True))
        )
        return torch.empty(extent, dtype=dtype, device=device).as_strided(
            self.shape, self.stride, self.offset
        )

    def __str__(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


def _spec(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return TensorSpec.of(value)
    if isinstance(value, list | tuple):
        return tuple(_spec(v) for v in value)
    if isinstance(value, torch.dtype | torch.device | torch.memory_format):
        return value
    return value


def _materialize(value: object) -> object:
    if isinstance(value, TensorSpec):
        return value.materialize()
    if isinstance(value, tuple):
        return [_materialize(v) for v in value]
    return value


def operator_implementations(modules: Iterable[str] | None = None) -> dict[str, Callable[..., Any]]:
    """``{"fastnas::mixed_bn_sum": python implementation}`` of the ``torch.library.custom_op`` operators
    defined in the kernel modules (the function the operator runs on a real device)."""
    impls: dict[str, Callable[..., Any]] = {}
    for name in modules if modules is not None else kernel_modules():
        for obj in vars(importlib.import_module(name)).values():
            fn = getattr(obj, "_init_fn", None)  # torch.library.CustomOpDef keeps the decorated function
            if isinstance(obj, torch.library.CustomOpDef) and callable(fn):
                impls[f"{obj._namespace}::{obj._name}"] = fn
    return impls


@dataclass(frozen=True)
class OpCall:
    """One call of an operator (``fastnas::mixed_bn_sum``) with the layouts of its tensor arguments."""

    op: str
    overload: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        def text(v: object) -> str:
            if isinstance(v, tuple) and v and isinstance(v[0], TensorSpec):
                return f"[{len(v)} x {v[0]}]"
            return str(v)

        return f"{self.op}({', '.join(text(a) for a in self.args)})"


def _op_logger(namespace: str, sink: list[OpCall]) -> Any:
    """A dispatch mode, entered above ``FakeTensorMode``, that logs every ``namespace::`` operator call and
    runs an operator whose tensor arguments are all real (model parameters and buffers, host-side masks
    such as the active sets of EDAS / DDSAS that the model reads with ``.tolist()``) on the real tensors,
    outside the fake mode; everything else, and every ``namespace::`` operator, stays fake."""
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class OpLog(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == namespace:
                name = func.name()  # "fastnas::mixed_bn_sum" (overload apart)
                sink.append(
                    OpCall(
                        op=name.split(".")[0],
                        overload=func._overloadname,
                        args=tuple(_spec(a) for a in args),
                        kwargs=tuple(sorted((k, _spec(v)) for k, v in kwargs.items())),
                    )
                )
                return func(*args, **kwargs)
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
                with unset_fake_temporarily():  # real in, real out (factories stay fake: no tensor input)
                    return func(*args, **kwargs)
            return func(*args, **kwargs)

    return OpLog()


@contextlib.contextmanager
def _model_kernels_on_cpu() -> Iterator[None]:
    """Model code takes its kernel path on CPU tensors, as it does on CUDA tensors: the Triton switch of
    the kernels (``TRITON_INTERPRET`` of ``fastnas.kernels._common``), ``kernels_in_cpu_models`` and the
    reference switch off (even when ``FASTNAS_FORCE_REFERENCE`` is set)."""
    from fastnas.backend import force_reference
    from fastnas.kernels import _common

    if not _common.HAS_TRITON:
        raise RuntimeError(f"triton is not importable: {_common.TRITON_IMPORT_ERROR}")
    saved = _common.TRITON_INTERPRET
    _common.TRITON_INTERPRET = True
    try:
        with force_reference(False), _common.kernels_in_cpu_models():
            yield
    finally:
        _common.TRITON_INTERPRET = saved


class TraceError(RuntimeError):
    """``run()`` of :func:`trace_ops` raised; ``calls`` holds the operator calls logged before."""

    def __init__(self, cause: BaseException, calls: list[OpCall]) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.calls = calls


def trace_ops(run: Callable[[], object], namespace: str = "fastnas") -> list[OpCall]:
    """The distinct ``namespace::`` operator calls of ``run()`` (in first-call order), run under
    ``FakeTensorMode`` with the kernel paths of model code on (see the module docstring).

    ``run`` makes its own inputs (inside the fake mode they are fake tensors; real tensors, e.g. a
    model's parameters, are allowed too). Backward operators are logged when ``run`` differentiates.
    ``FakeTensorMode`` is torch's tensor-without-data mode of ``torch.compile`` (``torch._subclasses``).
    Raises :class:`TraceError` (with the calls logged until then) when ``run`` raises.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls: list[OpCall] = []
    try:
        with (
            _model_kernels_on_cpu(),
            FakeTensorMode(allow_non_fake_inputs=True),
            _op_logger(namespace, calls),
        ):
            run()
    except Exception as exc:
        raise TraceError(exc, list(dict.fromkeys(calls))) from exc
    return list(dict.fromkeys(calls))


def replay(
    calls: Iterable[OpCall],
) -> tuple[list[KernelConfig], dict[KernelConfig, list[OpCall]], list[OpCall]]:
    """Run the Python implementation of every call's operator on ``meta`` tensors of its layouts (no data,
    no compute; a meta tensor's ``data_ptr`` keeps the view's offset, so alignment comes out as on the GPU)
    with the launches recorded (:func:`record_launches`).

    Returns the distinct kernel configurations (in first-launch order), for each the calls that launch
    it, and the calls that were not replayed: operators without a Python implementation in the kernel
    modules (the C++/CUDA operators of ``fastnas._C``)."""
    impls = operator_implementations()
    sources: dict[KernelConfig, list[OpCall]] = {}
    skipped: list[OpCall] = []
    with record_launches() as sink, torch.no_grad():
        for call in calls:
            impl = impls.get(call.op)
            if impl is None or call.overload not in ("default", ""):
                skipped.append(call)
                continue
            sink.clear()
            impl(*[_materialize(a) for a in call.args], **{k: _materialize(v) for k, v in call.kwargs})
            for config in sink:
                sources.setdefault(config, []).append(call)
    return list(sources), sources, skipped


# --------------------------------------------------------------------------------------------------
# Compilation for GPU targets
# --------------------------------------------------------------------------------------------------


@dataclass
class CompileResult:
    """One configuration compiled for one target, and what its cubin uses."""

    config: KernelConfig
    arch: int
    error: str = ""
    registers: int = 0
    stack: int = 0
    """Stack frame per thread (bytes); spilled registers live here."""
    local: int = 0
    """Local memory per thread (bytes)."""
    shared_static: int = 0
    """Static shared memory of the cubin (bytes; on sm_90 it includes the 1 KB system reserve)."""
    shared_dynamic: int = 0
    """Dynamic shared memory Triton launches the kernel with (``metadata.shared``)."""
    reserve_in_static: bool = False
    num_warps: int = 0
    num_stages: int = 0
    seconds: float = 0.0
    ptx_bytes: int = 0
    cubin_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def spills(self) -> bool:
        """Whether the kernel uses local memory or a stack frame (register spills, local arrays)."""
        return self.local > 0 or self.stack > 0

    @property
    def threads(self) -> int:
        return self.num_warps * 32

    @property
    def smem_kernel(self) -> int:
        """Shared memory the kernel itself uses per block: dynamic + static, without the system reserve."""
        reserve = RESERVED_SMEM_PER_BLOCK if self.reserve_in_static else 0
        return self.shared_dynamic + self.shared_static - reserve

    @property
    def smem_per_block(self) -> int:
        """Shared memory one block takes from the SM, the system reserve included."""
        return self.smem_kernel + RESERVED_SMEM_PER_BLOCK

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompileResult:
        data = dict(data)
        data["config"] = KernelConfig.from_json(data["config"])
        return cls(**data)


def make_source(fn: Any, config: KernelConfig) -> Any:
    """``triton.compiler.ASTSource`` of ``config`` for the ``JITFunction`` ``fn``.

    Versions handled: the constructor ``ASTSource(fn, signature, constexprs=None, attrs=None)`` of the
    Triton 3.3+ line, which 3.6 to 3.9 keep (run here on 3.8): ``signature`` is a dict from every
    parameter *name* to its type string, ``"constexpr"`` for constexprs (3.8 raises for non-string keys;
    some earlier releases also took a comma-separated string); ``constexprs`` is keyed by parameter name
    or by index path ``(i,)``: index paths are passed, which every one of these releases takes as is
    (names are converted to them); ``attrs`` maps index paths to ``[["tt.divisibility", 16]]``. The
    pre-3.3 constructor (``constants=`` and an ``AttrsDescriptor``) is detected and refused with a message.
    """
    from triton.compiler import ASTSource

    accepted = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" not in accepted:
        import triton

        raise RuntimeError(
            f"triton {triton.__version__}: ASTSource{tuple(accepted)[1:]} is the pre-3.3 API "
            "(constants=, AttrsDescriptor); benchmarks.aot needs triton >= 3.3"
        )
    index = {name: i for i, name in enumerate(config.params)}
    signature = dict(zip(config.params, config.types, strict=True))
    constexprs = {(index[name],): value for name, value in config.constexprs}
    attrs = {(index[name],): [["tt.divisibility", 16]] for name in config.aligned}
    return ASTSource(fn, signature, constexprs, attrs)


_USAGE_LINE = re.compile(r"^\s*Function (?P<name>.+?):\s*$")
_USAGE_FIELD = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``{function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": .., ...}}`` from the output of
    ``cuobjdump --dump-resource-usage``."""
    usage: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _USAGE_LINE.match(line)
        if match:
            current = match.group("name")
            continue
        if current is not None and "REG:" in line:
            usage[current] = {k: int(v) for k, v in _USAGE_FIELD.findall(line)}
            current = None
    return usage


def cubin_resource_usage(cubin: bytes, workdir: str | None = None) -> dict[str, dict[str, int]]:
    """Resource usage of every function of ``cubin`` (written to a temporary file for cuobjdump)."""
    tool = cuobjdump_path()
    if tool is None:
        raise RuntimeError("cuobjdump not found (neither in triton/backends/nvidia/bin nor on PATH)")
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=workdir, delete=False) as handle:
        handle.write(cubin)
        path = handle.name
    try:
        out = subprocess.run(
            [tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True, timeout=120
        ).stdout
    finally:
        os.unlink(path)
    return parse_resource_usage(out)


def _has_reserve(cubin: bytes, shared_static: int) -> bool:
    """Whether the static shared memory of a kernel includes the 1 KB system reserve: sm_90 cubins carry
    an ``.nv.shared.reserved`` section and place the reserve in the shared window of every kernel that
    uses shared memory (a kernel without any lists 0, and the runtime reserves the 1 KB all the same)."""
    return b".nv.shared.reserved" in cubin and shared_static >= RESERVED_SMEM_PER_BLOCK


def _compile_task(config: KernelConfig, arch: int, workdir: str) -> CompileResult:
    """Compile ``config`` for ``sm_<arch>`` in this process (a worker without the interpreter)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    result = CompileResult(config=config, arch=arch)
    started = time.perf_counter()
    try:
        obj = getattr(importlib.import_module(config.module), config.kernel)
        fn = _innermost_jit(obj)
        if not isinstance(fn, JITFunction):
            raise RuntimeError(
                f"{config.name} is a {type(fn).__name__}, not a JITFunction: the worker runs with "
                "TRITON_INTERPRET set"
            )
        kernel = triton.compile(
            make_source(fn, config), target=GPUTarget("cuda", arch, 32), options=dict(config.options)
        )
        cubin = kernel.asm["cubin"]
        usage = cubin_resource_usage(cubin, workdir)
        if len(usage) != 1:
            raise RuntimeError(f"expected one function in the cubin, found {sorted(usage)}")
        (fields,) = usage.values()
        metadata = kernel.metadata
        result.registers = fields.get("REG", 0)
        result.stack = fields.get("STACK", 0)
        result.local = fields.get("LOCAL", 0)
        result.shared_static = fields.get("SHARED", 0)
        result.reserve_in_static = _has_reserve(cubin, result.shared_static)
        result.shared_dynamic = int(metadata.shared)
        result.num_warps = int(metadata.num_warps)
        result.num_stages = int(metadata.num_stages)
        result.ptx_bytes = len(kernel.asm["ptx"])
        result.cubin_bytes = len(cubin)
    except Exception as exc:  # one failing configuration must not hide the others
        message = str(exc).strip().splitlines()
        result.error = f"{type(exc).__name__}: {' '.join(message[-3:]) if message else ''}"[:500]
    result.seconds = time.perf_counter() - started
    return result


def _worker_main(tasks_path: str, out_path: str) -> int:
    """Worker process: compile the tasks of ``tasks_path`` and append one JSON result per line."""
    tasks = json.loads(Path(tasks_path).read_text(encoding="utf-8"))
    workdir = str(Path(out_path).parent)
    with open(out_path, "a", encoding="utf-8") as out:
        for task in tasks:
            result = _compile_task(KernelConfig.from_json(task["config"]), int(task["arch"]), workdir)
            out.write(json.dumps(result.to_json()) + "\n")
            out.flush()
    return 0


_THIS_FILE = str(Path(__file__).resolve())
"""The worker runs this file as a script (not ``-m benchmarks.aot``), so that it does not depend on the
current directory; it imports the kernel modules by name, as this process."""


def _worker_env(cache_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # real JITFunctions in the worker
    env["TRITON_CACHE_DIR"] = cache_dir  # nothing cached outside the temporary directory
    # the modules of this process: its sys.path first (a script's own sys.path[0] is its folder)
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    inherited = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in [*paths, *inherited] if p))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def compile_configs(
    configs: Sequence[KernelConfig],
    archs: Sequence[int] = DEFAULT_ARCHS,
    jobs: int | None = None,
    timeout: float | None = 1800.0,
) -> list[CompileResult]:
    """Compile every configuration for every ``sm_<arch>`` in ``jobs`` worker processes (default: the
    CPU count, at most 8) and read the resources of each cubin. Results come in the order of
    ``configs`` x ``archs``; a configuration that does not compile has ``error`` set. Raises when a worker
    dies or runs past ``timeout`` seconds."""
    tasks = [(config, int(arch)) for config in configs for arch in archs]
    if not tasks:
        return []
    jobs = max(1, min(jobs or min(os.cpu_count() or 1, 8), len(configs)))
    done: dict[tuple[KernelConfig, int], CompileResult] = {}
    with tempfile.TemporaryDirectory(prefix="fastnas-aot-") as tmp:
        env = _worker_env(os.path.join(tmp, "triton-cache"))
        workers: list[tuple[subprocess.Popen[bytes], str, Any]] = []
        try:
            for j in range(jobs):
                share = [
                    t for i, t in enumerate(tasks) if (i // len(archs)) % jobs == j
                ]  # configs round-robin
                tasks_path, out_path = os.path.join(tmp, f"tasks{j}.json"), os.path.join(tmp, f"out{j}.jsonl")
                payload = [{"config": c.to_json(), "arch": a} for c, a in share]
                Path(tasks_path).write_text(json.dumps(payload), encoding="utf-8")
                log = open(os.path.join(tmp, f"log{j}.txt"), "w", encoding="utf-8")  # noqa: SIM115
                command = [sys.executable, _THIS_FILE, "--worker", tasks_path, out_path]
                workers.append((subprocess.Popen(command, env=env, stdout=log, stderr=log), out_path, log))
            deadline = None if timeout is None else time.monotonic() + timeout
            failures = []
            for j, (proc, _, log) in enumerate(workers):
                try:
                    left = None if deadline is None else max(1.0, deadline - time.monotonic())
                    code = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    code = None
                if code != 0:
                    log.flush()
                    text = Path(log.name).read_text(encoding="utf-8", errors="replace")[-2000:]
                    failures.append(
                        f"worker {j} {'timed out' if code is None else f'exited {code}'}:\n{text}"
                    )
            if failures:
                raise RuntimeError("AOT compile workers failed:\n" + "\n".join(failures))
            for _, out_path, _ in workers:
                for line in Path(out_path).read_text(encoding="utf-8").splitlines():
                    result = CompileResult.from_json(json.loads(line))
                    done[(result.config, result.arch)] = result
        finally:  # never leave a worker behind (timeout, error, Ctrl-C)
            for proc, _, log in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
    missing = [f"{c.name} sm_{a}" for c, a in tasks if (c, a) not in done]
    if missing:
        raise RuntimeError(f"no result for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [done[task] for task in tasks]


# --------------------------------------------------------------------------------------------------
# Occupancy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of one GPU generation (CUDA C Programming Guide, compute capabilities table)."""

    name: str
    smem_per_sm: int
    """Shared memory the blocks of one SM can hold, system reserves included (the maximum carveout)."""
    smem_per_block: int
    """Most shared memory one block may use (the opt-in maximum)."""
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    reg_alloc_unit: int = 256
    """Registers are allocated per warp in units of 256."""
    warp_alloc_granularity: int = 4
    smem_alloc_unit: int = 128


SM_LIMITS: dict[int, SMLimits] = {
    80: SMLimits("A100 (sm_80)", smem_per_sm=164 * 1024, smem_per_block=163 * 1024),
    90: SMLimits("H100/H200 (sm_90)", smem_per_sm=228 * 1024, smem_per_block=227 * 1024),
}


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    limiter: str
    """What bounds the blocks per SM: ``registers``, ``shared memory``, ``warps`` or ``blocks``."""
    fraction: float
    """``warps_per_sm / max_warps_per_sm``."""


def _ceil_to(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(registers: int, threads: int, smem_per_block: int, limits: SMLimits) -> Occupancy:
    """Blocks and warps per SM of a kernel with ``registers`` per thread, ``threads`` per block and
    ``smem_per_block`` bytes of shared memory per block (system reserve included), the rules of CUDA's
    occupancy calculator: registers per warp rounded up to 256 and warps per SM by registers down to a
    multiple of 4; shared memory per block rounded up to 128 bytes. 0 blocks when one block does not fit."""
    warps = max(1, -(-threads // 32))
    bounds = {"warps": limits.max_warps_per_sm // warps, "blocks": limits.max_blocks_per_sm}
    if registers > limits.max_regs_per_thread:
        bounds["registers"] = 0
    elif registers > 0:
        per_warp = _ceil_to(registers * 32, limits.reg_alloc_unit)
        warps_by_regs = limits.regs_per_sm // per_warp
        warps_by_regs -= warps_by_regs % limits.warp_alloc_granularity
        bounds["registers"] = warps_by_regs // warps
    if smem_per_block > 0:
        smem = _ceil_to(smem_per_block, limits.smem_alloc_unit)
        bounds["shared memory"] = 0 if smem > limits.smem_per_block else limits.smem_per_sm // smem
    order = ("warps", "blocks", "registers", "shared memory")  # on a tie, the hardware's own limits first
    limiter = min(bounds, key=lambda k: (bounds[k], order.index(k)))
    blocks = bounds[limiter]
    return Occupancy(blocks, blocks * warps, limiter, blocks * warps / limits.max_warps_per_sm)


# --------------------------------------------------------------------------------------------------
# CUDA C++ kernels (nvcc)
# --------------------------------------------------------------------------------------------------


@dataclass
class CudaKernelResult:
    """One kernel of a ``.cu`` file compiled for one target."""

    source: str
    function: str
    """Demangled name, without the namespace and parameters (``weighted_sum_forward_kernel<float>``)."""
    arch: int
    registers: int
    stack: int
    local: int
    shared_static: int
    reserve_in_static: bool
    threads: int

    @property
    def spills(self) -> bool:
        return self.local > 0 or self.stack > 0

    @property
    def smem_kernel(self) -> int:
        return self.shared_static - (RESERVED_SMEM_PER_BLOCK if self.reserve_in_static else 0)

    @property
    def smem_per_block(self) -> int:
        return self.smem_kernel + RESERVED_SMEM_PER_BLOCK


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else names


def _short_name(demangled: str) -> str:
    """``void (anonymous namespace)::f<float>(float const*, ...)`` -> ``f<float>``."""
    text = demangled.replace("(anonymous namespace)::", "")
    text = text[5:] if text.startswith("void ") else text
    depth = 0
    for i, char in enumerate(text):
        depth += (char == "<") - (char == ">")
        if char == "(" and depth == 0:
            text = text[:i]
            break
    base, angle, rest = text.partition("<")
    return base.rsplit("::", 1)[-1] + angle + rest


def compile_cuda_source(
    source: str | Path,
    threads: int,
    archs: Sequence[int] = DEFAULT_ARCHS,
    flags: Sequence[str] = ("-O3", "-std=c++17"),
    nvcc: str | None = None,
) -> list[CudaKernelResult]:
    """Compile a torch-free ``.cu`` file with ``nvcc -cubin -arch=sm_<arch>`` for each target and read
    every kernel's resources; ``threads`` is the block size its launches use (for the occupancy)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found ($CUDA_HOME/bin, /usr/local/cuda/bin, PATH)")
    source = Path(source)
    results = []
    with tempfile.TemporaryDirectory(prefix="fastnas-nvcc-") as tmp:
        for arch in archs:
            cubin_path = os.path.join(tmp, f"sm_{arch}.cubin")
            command = [nvcc, "-cubin", f"-arch=sm_{arch}", *flags, "-I", str(source.parent), "-o", cubin_path]
            subprocess.run([*command, str(source)], capture_output=True, text=True, check=True, timeout=600)
            cubin = Path(cubin_path).read_bytes()
            usage = cubin_resource_usage(cubin, tmp)
            names = list(usage)
            for mangled, demangled in zip(names, _demangle(names), strict=True):
                fields = usage[mangled]
                results.append(
                    CudaKernelResult(
                        source=source.name,
                        function=_short_name(demangled),
                        arch=arch,
                        registers=fields.get("REG", 0),
                        stack=fields.get("STACK", 0),
                        local=fields.get("LOCAL", 0),
                        shared_static=fields.get("SHARED", 0),
                        reserve_in_static=_has_reserve(cubin, fields.get("SHARED", 0)),
                        threads=threads,
                    )
                )
    return sorted(results, key=lambda r: (r.function, r.arch))


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "--worker":
        return _worker_main(argv[1], argv[2])
    print("usage: python benchmarks/aot.py --worker TASKS.json OUT.jsonl", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
