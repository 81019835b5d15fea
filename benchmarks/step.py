"""Time one full supernet search iteration (architecture step, then weight step).

The iteration mirrors :class:`fastnas.train.search.SearchRunner`: the architecture is updated first
(first order: backward of the architecture loss into the architecture parameters only; second order:
DARTS unrolled gradients), with Adam; then the weights (SGD with momentum and weight decay, backward
into the weights only, gradient-norm clipping). Hyper-parameters are the method's published defaults.
Data are random (``torch.randn`` images, ``torch.randint`` labels) resident on the device, so the
numbers measure the model and the optimisers, never a data pipeline.

``mode`` runs the iteration as the search loop's options do: ``eager`` (default), ``compile`` (both
levels through ``torch.compile``, :mod:`fastnas.train.compiled`; the warm-up iterations compile) or
``graph`` (the whole first-order iteration captured in a CUDA graph and replayed,
:mod:`fastnas.train.cuda_graph`; CUDA only - :func:`mode_unsupported_reason` says why elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import fastnas.nn.fast_executor  # noqa: F401  (registers the "fast" cell executor)
from benchmarks.report import Row
from fastnas.backend import force_reference
from fastnas.errors import ConfigError
from fastnas.methods import METHODS, get_method
from fastnas.nn import executor as cell_executor
from fastnas.nn.skeleton import Stem
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace
from fastnas.train.compiled import CompiledLevels, check_compilable
from fastnas.train.cuda_graph import GraphedStep, check_cuda_graph, graph_optimizer_options
from fastnas.train.device import autocast, resolve_device

Batch = tuple[torch.Tensor, torch.Tensor]

#: How an iteration runs: eagerly, with both levels compiled, or replayed from a CUDA graph.
MODES = ("eager", "compile", "graph")


def method_names() -> tuple[str, ...]:
    """Every registered search method (:data:`fastnas.methods.METHODS`), in registration order."""
    return tuple(METHODS)


def executor_names() -> tuple[str, ...]:
    """Every registered cell executor (``reference``, ``fast`` and any added with ``register_executor``)."""
    return cell_executor.executor_names()


def takes_order(method: str) -> bool:
    """Whether ``method`` has a second-order architecture step (an ``order`` option)."""
    return "order" in {f.name for f in dataclasses.fields(get_method(method).Options)}


#: Keys every result of :func:`measure_search_step` has.
RESULT_KEYS = (
    "benchmark",
    "method",
    "order",
    "precision",
    "batch_size",
    "C",
    "layers",
    "image_size",
    "executor",
    "mode",
    "reference_ops",
    "warmup",
    "repeats",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "mean_ms",
    "min_ms",
    "times_ms",
    "images_per_s",
    "peak_mem_mb",
    "mem_measure",
    "device",
    "device_name",
    "torch_version",
    "num_threads",
)


@dataclass
class SearchStep:
    """A model, its two optimisers and two fixed batches; calling it runs one search iteration."""

    model: SearchModel
    weight_optimizer: torch.optim.SGD
    arch_optimizer: torch.optim.Adam
    weight_scaler: torch.amp.GradScaler
    arch_scaler: torch.amp.GradScaler
    train_batch: Batch
    val_batch: Batch
    device: torch.device
    precision: str
    lr: float
    grad_clip: float
    arch_grad_clip: float | None
    reference_ops: bool = False
    epoch: int = 0  # the epoch of the method's schedules the iterations belong to
    step_index: int = 0
    mode: str = "eager"
    compiled: CompiledLevels | None = None  # mode "compile"
    graphed: GraphedStep | None = None  # mode "graph"
    settings: Row = field(default_factory=dict)  # what it was built with (a result's fields)

    def _autocast(self) -> Any:
        return autocast(self.device, self.precision, cache_enabled=self.graphed is None)

    def arch_loss(self, val_batch: Batch) -> torch.Tensor:
        """The upper-level loss of ``val_batch`` (through ``torch.compile`` in mode ``compile``)."""
        if self.compiled is not None:
            return self.compiled.arch_loss(*val_batch)
        return self.model.loss(*val_batch, level="arch")

    def arch_step(self, train_batch: Batch | None = None, val_batch: Batch | None = None) -> torch.Tensor:
        """The architecture update (first or second order), as ``SearchRunner.arch_step``."""
        from fastnas.algorithms.architect import unrolled_arch_gradients

        train_batch = train_batch or self.train_batch
        val_batch = val_batch or self.val_batch
        params = self.model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        second_order = getattr(self.model.algorithm, "order", 1) == 2
        with self._autocast():
            if second_order:
                grads, loss = unrolled_arch_gradients(
                    self.model, train_batch, val_batch, self.lr, self.weight_optimizer
                )
            else:
                loss = self.arch_loss(val_batch)
        if second_order:  # the gradients as the unrolled step computed them, in the parameters' dtype
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype)
        else:
            self.arch_scaler.scale(loss).backward(inputs=params)
        if self.arch_grad_clip:
            self.arch_scaler.unscale_(self.arch_optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.arch_grad_clip)
        self.arch_scaler.step(self.arch_optimizer)
        self.arch_scaler.update()
        self.model.algorithm.after_arch_step()
        return loss.detach()

    def weight_loss(self, train_batch: Batch) -> torch.Tensor:
        """The lower-level loss of ``train_batch`` (through ``torch.compile`` in mode ``compile``)."""
        x, y = train_batch
        if self.compiled is not None:
            return self.compiled.weight_loss(x, y)[0]
        return self.model.criterion(self.model(x), y, "weights")

    def weight_step(self, train_batch: Batch | None = None) -> torch.Tensor:
        """The weight update, as ``SearchRunner.weight_step``."""
        params = self.model.weight_parameters()
        self.weight_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.weight_loss(train_batch or self.train_batch)
        self.weight_scaler.scale(loss).backward(inputs=params)
        self.weight_scaler.unscale_(self.weight_optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.weight_scaler.step(self.weight_optimizer)
        self.weight_scaler.update()
        return loss.detach()

    def bilevel(
        self, train: Batch, val: Batch | None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The iteration as mode ``graph`` captures it (the ``GraphedStep`` step function)."""
        arch_loss = None if val is None else self.arch_step(train, val)
        loss = self.weight_step(train)
        return arch_loss, loss, loss

    def __call__(self) -> None:
        """One search iteration: the method draws its sub-graph (EDAS, DDSAS), architecture step, then
        weight step."""
        ctx = force_reference() if self.reference_ops else contextlib.nullcontext()
        with ctx:
            self.model.start_step(self.epoch, self.step_index)
            self.step_index += 1
            if self.graphed is not None:
                self.graphed(self.train_batch, self.val_batch, None)
            else:
                self.arch_step()
                self.weight_step()


def stage_space(ops_per_edge: int, seed: int = 0) -> DartsSpace:
    """The DARTS space with every edge of both cell types restricted to ``ops_per_edge`` random ops (one
    that computes always among them): what a P-DARTS stage with that many candidates searches."""
    space = DartsSpace()
    if ops_per_edge >= space.num_ops:
        return space
    g = torch.Generator().manual_seed(seed)
    sets = {}
    for t in space.cell_types:
        rows = []
        for _ in range(space.num_edges):
            ops = torch.randperm(space.num_ops - 1, generator=g)[:ops_per_edge] + 1  # never only `none`
            rows.append(sorted(ops.tolist()))
        sets[t] = rows
    return space.with_candidates(sets)


def random_batch(batch_size: int, image_size: int, num_classes: int, device: torch.device) -> Batch:
    """Random non-zero images (standard normal) and uniformly random labels on ``device``."""
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    return x, y


def unsupported_reason(precision: str, order: int) -> str | None:
    """Why the search loop refuses this combination, or None when it runs."""
    if precision == "fp16" and order == 2:
        return "fp16 unsupported with second order (no loss scaling through the virtual step)"
    return None


def mode_unsupported_reason(
    mode: str, device: torch.device, method: str = "darts", order: int = 1, precision: str = "fp32"
) -> str | None:
    """Why the search loop refuses ``mode`` here (the error ``--compile`` / ``--cuda-graph`` would
    give), or None when it runs."""
    if mode not in MODES:
        return f"unknown mode {mode!r}; use one of {', '.join(MODES)}"
    algorithm = get_method(method).algorithm
    try:
        if mode == "compile":
            check_compilable(algorithm)
        elif mode == "graph":
            check_cuda_graph(device, algorithm, order, precision)
    except ConfigError as exc:
        return str(exc)
    return None


def build_search_step(
    batch_size: int,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    C: int = 16,
    layers: int = 8,
    image_size: int = 32,
    order: int = 1,
    executor: str = "reference",
    method: str = "darts",
    reference_ops: bool = False,
    seed: int = 0,
    space: DartsSpace | None = None,
    mode: str = "eager",
    num_classes: int = 10,
    stem: Stem = "cifar",
) -> SearchStep:
    """Build the supernet, optimisers (the method's published settings) and two random batches;
    ``space`` (e.g. one with per-edge candidate sets) replaces the default DARTS space; ``mode``: see
    the module docstring; ``num_classes`` and ``stem`` (``imagenet``: the ImageNet stem) shape the
    supernet and the labels."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    reason = unsupported_reason(precision, order) or mode_unsupported_reason(
        mode, dev, method, order, precision
    )
    if reason:
        raise ValueError(reason)
    torch.manual_seed(seed)
    with_order = takes_order(method)
    if order != 1 and not with_order:
        raise ValueError(f"{method} has first-order architecture steps only, got order={order}")
    model = SearchModel.build(
        method,
        space=space,
        C=C,
        layers=layers,
        num_classes=num_classes,
        in_channels=3,
        executor=executor,
        stem=stem,
        options={"order": order} if with_order else None,
    ).to(dev)
    model.train()
    hp = model.algorithm.defaults
    model.start_epoch(0, hp.epochs)  # the first epoch's schedules, as the search loop sets them
    weight_extra, arch_extra = (
        graph_optimizer_options(dev, hp.lr, hp.arch_lr) if mode == "graph" else ({}, {})
    )
    weight_opt = torch.optim.SGD(
        model.weight_parameters(),
        **{"lr": hp.lr, **weight_extra},
        momentum=hp.momentum,
        weight_decay=hp.weight_decay,
    )
    arch_opt = torch.optim.Adam(
        model.arch_parameters(),
        **{"lr": hp.arch_lr, **arch_extra},
        betas=hp.arch_betas,
        weight_decay=hp.arch_weight_decay,
    )
    for group in arch_opt.param_groups:  # e.g. EDAS' warm-up weight decay
        group.update(model.algorithm.arch_optimizer_settings(0))
    use_scaler = precision == "fp16"
    step = SearchStep(
        model=model,
        weight_optimizer=weight_opt,
        arch_optimizer=arch_opt,
        weight_scaler=torch.amp.GradScaler(dev.type, enabled=use_scaler),
        arch_scaler=torch.amp.GradScaler(dev.type, enabled=use_scaler),
        train_batch=random_batch(batch_size, image_size, num_classes, dev),
        val_batch=random_batch(batch_size, image_size, num_classes, dev),
        device=dev,
        precision=precision,
        lr=hp.lr,
        grad_clip=hp.grad_clip,
        arch_grad_clip=hp.arch_grad_clip,
        reference_ops=reference_ops,
        mode=mode,
        settings={
            "method": method,
            "order": order,
            "precision": precision,
            "batch_size": batch_size,
            "C": C,
            "layers": layers,
            "image_size": image_size,
            "executor": executor,
            "mode": mode,
            "reference_ops": reference_ops,
        },
    )
    if mode == "compile":
        step.compiled = CompiledLevels(model, model.supernet)
    elif mode == "graph":
        step.graphed = GraphedStep(step.bilevel, dev)
    return step


# ----------------------------------------------------------------------------- timing
def time_cuda(fn: Callable[[], None], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls, measured with CUDA events (GPU time, synchronised)."""
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def time_cpu(fn: Callable[[], None], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls, measured with ``time.perf_counter``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile (linear interpolation), mean and minimum of ``times_ms``."""
    arr = np.asarray(times_ms, dtype=np.float64)
    p10, median, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": float(arr.min()),
    }


# ----------------------------------------------------------------------------- memory
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kb(field: str) -> int | None:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/self/status``, or None where unavailable."""
    try:
        with open(_STATUS, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0); True on success."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _psutil_rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def _release_free_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so RSS is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CpuMemoryProbe:
    """Host-memory growth of the process over a measurement, with the best method available.

    1. ``vmhwm`` (Linux): the kernel's peak RSS (``VmHWM``, reset after warm-up through
       ``/proc/self/clear_refs``) minus the file-backed part (library code paged in on first use),
       i.e. the peak of anonymous memory over the timed iterations.
    2. ``psutil-rss``: RSS after the timed iterations (psutil); not a peak.
    3. ``ru_maxrss``: growth of the process-lifetime peak RSS; 0 when an earlier peak was higher.
    Growth is relative to the memory before the model was built (after returning freed heap to the
    OS), so it covers the model, optimiser state, batches and activations.
    """

    def __init__(self) -> None:
        _release_free_heap()
        if _reset_peak_rss():
            self.method = "vmhwm"
        elif _psutil_rss_bytes() is not None:
            self.method = "psutil-rss"
        else:
            self.method = "ru_maxrss"
        self.baseline = self._current()

    def _current(self) -> int:
        if self.method == "vmhwm":
            return (_status_kb("RssAnon") or 0) * 1024
        if self.method == "psutil-rss":
            return _psutil_rss_bytes() or 0
        unit = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, kB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit

    def reset_peak(self) -> None:
        """Start the peak window (after warm-up)."""
        if self.method == "vmhwm":
            _reset_peak_rss()

    def _peak(self) -> int:
        if self.method != "vmhwm":
            return self._current()
        not_anon = (_status_kb("RssFile") or 0) + (_status_kb("RssShmem") or 0)
        return ((_status_kb("VmHWM") or 0) - not_anon) * 1024

    def peak_growth_mb(self) -> float:
        """Peak over the timed window above the larger of the memory before and after the run.

        Call it once the benchmark's objects are gone: memory still held then (oneDNN primitive
        caches, thread pools created in the first warm-up) is not the step's and is not counted.
        """
        peak = self._peak()
        _release_free_heap()
        after = self._current() if self.method == "vmhwm" else self.baseline
        return max(peak - max(self.baseline, after), 0) / 2**20

    def description(self) -> str:
        return {
            "vmhwm": "host peak anonymous RSS growth (VmHWM minus file-backed RSS, reset after warm-up via "
            "/proc/self/clear_refs)",
            "psutil-rss": "host RSS growth after the timed iterations (psutil; not a peak)",
            "ru_maxrss": "host growth of the process-lifetime peak RSS (ru_maxrss; 0 if an earlier peak "
            "was higher)",
        }[self.method]


class CudaMemoryProbe:
    """Peak CUDA memory allocated by tensors over the timed iterations, above what was allocated before."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        self.baseline = torch.cuda.memory_allocated(device)

    def reset_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_growth_mb(self) -> float:
        return (torch.cuda.max_memory_allocated(self.device) - self.baseline) / 2**20

    def description(self) -> str:
        return "CUDA peak allocated (max_memory_allocated over the timed iterations, minus before build)"


MemoryProbe = CpuMemoryProbe | CudaMemoryProbe


# ----------------------------------------------------------------------------- environment
def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for a GPU, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions and thread count a result was measured with."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "num_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- measurement
def run_timed(
    step: Callable[[], None], device: torch.device, warmup: int, repeats: int, probe: MemoryProbe
) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones (ms each); the probe's peak covers the latter."""
    for _ in range(warmup):
        step()
    probe.reset_peak()
    return time_cuda(step, repeats) if device.type == "cuda" else time_cpu(step, repeats)


def measure_search_step(
    batch_size: int, device: str = "auto", warmup: int = 3, repeats: int = 10, **settings: Any
) -> Row:
    """Time one full search iteration (both levels) of ``build_search_step(batch_size, device,
    **settings)`` (``settings``: its keywords, e.g. ``precision``, ``C``, ``order``, ``method``); see the
    module docstring and README.md."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup} repeats={repeats}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the search loop does (non-deterministic runs)
    probe: MemoryProbe = CudaMemoryProbe(dev) if dev.type == "cuda" else CpuMemoryProbe()
    step = build_search_step(batch_size, dev, **settings)
    case = {"benchmark": "search_step", **step.settings, "warmup": warmup, "repeats": repeats}
    times = run_timed(step, dev, warmup, repeats, probe)
    del step  # the probe's end-of-run baseline must not hold the model
    peak_mem_mb = probe.peak_growth_mb()
    stats = summarize(times)
    return {
        **case,
        **stats,
        "times_ms": times,
        "images_per_s": batch_size / (stats["median_ms"] / 1e3),
        "peak_mem_mb": peak_mem_mb,
        "mem_measure": probe.description(),
        **environment(dev),
    }
