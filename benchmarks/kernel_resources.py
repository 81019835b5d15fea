"""Registers, shared memory, local memory and occupancy of every Triton kernel configuration the benchmarks
and the fast executor launch, compiled ahead of time for sm_80 and sm_90 on a machine without a GPU,
and of the CUDA C++ kernels of the extension (``csrc/cuda/weighted_sum_kernel.cu``, nvcc).

The configurations are traced, not listed (:mod:`benchmarks.aot`): every scenario below runs its
model code under ``FakeTensorMode`` and logs the ``fastnas::`` operator calls, whose launchers are then
replayed on meta tensors with the launches recorded. A scenario is what a benchmark section runs:

- ``search_step``: the weight step (forward and backward) of the DARTS supernet (``--method``, ``--C``,
  ``--layers``, ``--image-size``, first ``--batch-sizes`` entry) with the ``reference`` and ``fast`` cell
  executors (``plain`` launches no kernel). The architecture step runs the same supernet and launches
  nothing new (checked for every scenario; ``--aot-arch-step`` traces it too); so does the second-order
  step.
- ``methods``: PC-DARTS (both executors), EDAS and DDSAS (reference executor, as the section runs them).
- ``pdarts_stages``: P-DARTS at each stage's depth and candidate count (``--pdarts-layers/--pdarts-ops``).
- ``kernels``: every case of ``benchmarks/kernel_bench.py`` at its stage shapes, batch 64 and 256.
- ``retrain``: one training step of ``NetworkCIFAR(36, 20 cells, auxiliary)`` of DARTS_V2 at batch 96,
  channels-last, as ``fastnas train`` runs on CUDA (the channels-last kernel layouts).

Each in ``--aot-precision`` (default fp32 and bf16; bf16 is autocast, as ``--precision bf16``).

A *launch configuration* is a kernel with its pointer dtypes and the values of its declared constexprs
(block sizes and flags: what the launcher chooses). The Triton JIT compiles one binary per
*specialisation* of it (runtime ints equal to 1 become constants, arguments divisible by 16 are marked
so): those fold arithmetic away, and they can decide a spill when a kernel sits at the 255-register
limit. Every specialisation is compiled (``--aot-specializations first``: one per launch
configuration, faster); a row of the table is a launch configuration on one target, with the register
range, the most shared and local memory and the lowest occupancy over its specialisations (``variants``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import aot, report
from benchmarks.report import Column, Row, Section

REPO = Path(__file__).resolve().parents[1]
CUDA_SOURCE = REPO / "csrc" / "cuda" / "weighted_sum_kernel.cu"
PRECISIONS = ("fp32", "bf16")
KERNEL, TARGET = Column("kernel"), Column("target")  # the columns of both tables


# ----------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """Model code to trace: ``build()`` makes the model (real CPU tensors) and returns the step to run
    under the fake mode."""

    name: str
    group: str
    build: Callable[[], Callable[[], object]]


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    from fastnas.train.device import autocast

    return autocast(torch.device("cpu"), precision)  # CPU autocast: bf16 convolutions, fp32 softmax


def _search_step(
    method: str,
    executor: str,
    precision: str,
    batch: int,
    C: int,
    layers: int,
    image_size: int,
    space: Any = None,
    arch_step: bool = True,
) -> Callable[[], object]:
    """The supernet of ``benchmarks.step.build_search_step`` and its backward passes: architecture loss
    into the architecture parameters (``arch_step``), weight loss into the weights; no optimiser step."""
    from benchmarks.step import build_search_step

    step = build_search_step(
        batch, "cpu", precision, C, layers, image_size, 1, executor, method, False, 0, space
    )
    model = step.model
    model.start_step(step.epoch, step.step_index)  # EDAS / DDSAS draw their sub-graph (host side)
    weights, arch = model.weight_parameters(), model.arch_parameters()

    def run() -> None:
        x = torch.randn(batch, 3, image_size, image_size)
        y = torch.randint(0, 10, (batch,))
        if arch_step:
            with _autocast(precision):
                arch_loss = model.loss(x, y, level="arch")
            torch.autograd.grad(arch_loss, arch, allow_unused=True)
        with _autocast(precision):
            loss = model.criterion(model(x), y, "weights")
        torch.autograd.grad(loss, weights, allow_unused=True)

    return run


def _kernel_case(kernel: str, batch: int, channels: int, size: int, precision: str) -> Callable[[], object]:
    """One case of ``benchmarks/kernel_bench.py`` (``impl="fused"``, forward + backward)."""
    from benchmarks.kernel_bench import DTYPES, KERNEL_CASES

    build = KERNEL_CASES[kernel]
    return lambda: build("fused", batch, channels, size, DTYPES[precision], torch.device("cpu"))[0]()


def _retrain(precision: str, batch: int = 96) -> Callable[[], object]:
    """One training step of the DARTS_V2 evaluation network as ``fastnas train`` runs it on CUDA
    (C=36, 20 cells, auxiliary head, channels-last)."""
    from fastnas import NetworkCIFAR, load_genotype

    model = NetworkCIFAR(36, 10, 20, True, load_genotype("DARTS_V2")).to(memory_format=torch.channels_last)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> None:
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with _autocast(precision):
            logits, aux = model(x)
            loss = logits.float().sum() + (aux.float().sum() if aux is not None else 0.0)
        torch.autograd.grad(loss, params, allow_unused=True)

    return run


def scenarios(args: argparse.Namespace, scope: str = "full") -> list[Scenario]:
    """The scenarios of ``scope``: ``full`` (every benchmark section, see the module docstring) or
    ``test`` (the fast executor's search step and the kernel benchmark cases at the first batch size)."""
    from benchmarks.kernel_bench import DARTS_STAGE_SHAPES, KERNEL_CASES
    from benchmarks.step import stage_space

    precisions = list(getattr(args, "aot_precision", None) or PRECISIONS)
    batch = (getattr(args, "batch_sizes", None) or [64])[0]
    shape = {
        "C": getattr(args, "C", 16),
        "layers": getattr(args, "layers", 8),
        "image_size": getattr(args, "image_size", 32),
    }
    method = getattr(args, "method", "darts")
    # the architecture step runs the same supernet again and launches no configuration the weight step
    # does not (checked for every scenario of the full scope), so it is left out unless --aot-arch-step
    # asks for it (it doubles the tracing time)
    with_arch_step = bool(getattr(args, "aot_arch_step", False))
    out: list[Scenario] = []

    def search(group: str, m: str, executor: str, p: str, **extra: Any) -> None:
        settings = {**shape, **extra}
        space = settings.pop("space", None)
        arch_step = settings.pop("arch_step", with_arch_step)
        name = f"{m} {executor} {p} C={settings['C']} cells={settings['layers']} batch {batch}"
        build = functools.partial(
            _search_step, m, executor, p, batch, space=space, arch_step=arch_step, **settings
        )
        out.append(Scenario(name, group, build))

    for p in precisions:
        search("search_step", method, "fast", p)
        if scope == "full":
            search("search_step", method, "reference", p)
    if scope == "full":
        for p in precisions:
            methods = {"pc-darts": ("reference", "fast"), "edas": ("reference",), "ddsas": ("reference",)}
            for m, executors in methods.items():
                for executor in executors:
                    search("methods", m, executor, p)
            pd_layers = getattr(args, "pdarts_layers", [5, 11, 17])
            pd_ops = getattr(args, "pdarts_ops", [8, 5, 3])
            for layers, ops in zip(pd_layers, pd_ops):
                space = stage_space(ops, getattr(args, "seed", 0))
                search("pdarts_stages", "pdarts", "reference", p, layers=layers, space=space)
    kernel_batches = [batch] if scope == "test" else sorted({batch, *getattr(args, "batch_sizes", [64]), 256})
    for kernel in KERNEL_CASES:
        for b in kernel_batches:
            for channels, size in DARTS_STAGE_SHAPES:
                for p in precisions:
                    name = f"{kernel} batch {b} C={channels} {size}x{size} {p}"
                    build = functools.partial(_kernel_case, kernel, b, channels, size, p)
                    out.append(Scenario(name, "kernels", build))
    if scope == "full":
        for p in precisions:
            name = f"retrain DARTS_V2 C=36 20 cells batch 96 channels-last {p}"
            out.append(Scenario(name, "retrain", functools.partial(_retrain, p)))
    return out


@dataclass
class LaunchPlan:
    """What the scenarios launch: the distinct kernel configurations (JIT specialisations), the
    scenarios each comes from, and the operator calls without Triton kernels (C++/CUDA operators)."""

    configs: list[aot.KernelConfig]
    used_by: dict[aot.KernelConfig, list[str]]
    other_ops: dict[str, list[str]]
    failed: dict[str, str]
    """Scenarios whose step raised, and the error (their calls until then are replayed)."""
    seconds: float

    def launch_configurations(self) -> dict[tuple[str, str], list[aot.KernelConfig]]:
        """Specialisations grouped by launch configuration ``(kernel, label)``, in first-launch order."""
        groups: dict[tuple[str, str], list[aot.KernelConfig]] = {}
        for config in self.configs:
            groups.setdefault((config.name, config.label()), []).append(config)
        return groups


def launch_plan(chosen: Sequence[Scenario], progress: bool = False) -> LaunchPlan:
    """Trace every scenario and replay its operator calls (see the module docstring)."""
    started = time.perf_counter()
    used_by: dict[aot.KernelConfig, list[str]] = {}
    other: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for scenario in chosen:
        if progress:
            report.progress(f"kernel_resources: tracing {scenario.group}: {scenario.name}")
        try:
            calls = aot.trace_ops(scenario.build())
        except aot.TraceError as exc:  # a broken benchmark case: keep what it launched before
            calls = exc.calls
            failed[scenario.name] = str(exc)[:200]
            if progress:
                report.progress(f"kernel_resources:   {scenario.name} raised {exc}")
        configs, _, skipped = aot.replay(calls)
        for config in configs:
            used_by.setdefault(config, []).append(scenario.name)
        for call in skipped:
            other.setdefault(call.op, [])
            if scenario.name not in other[call.op]:
                other[call.op].append(scenario.name)
    return LaunchPlan(list(used_by), used_by, other, failed, time.perf_counter() - started)


# ----------------------------------------------------------------------------- rows
def _occupancy_fields(registers: int, threads: int, smem_per_block: int, arch: int) -> Row:
    limits = aot.SM_LIMITS.get(arch)
    if limits is None:
        return {}
    occ = aot.occupancy(registers, threads, smem_per_block, limits)
    return {
        "blocks_per_sm": occ.blocks_per_sm,
        "warps_per_sm": occ.warps_per_sm,
        "occupancy_pct": 100.0 * occ.fraction,
        "limiter": occ.limiter,
    }


def _is_bad(status: object) -> bool:
    text = str(status or "")
    return text.startswith(("SPILLS", "error"))


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def triton_rows(results: Sequence[aot.CompileResult], variants: dict[tuple[str, str], int]) -> list[Row]:
    """One row per launch configuration and target, over its compiled JIT specialisations: the register
    range, the most shared and local memory, the lowest occupancy; ``SPILLS`` / ``error`` when any
    specialisation spills / does not compile (with how many of them)."""
    groups: dict[tuple[str, str, int], list[aot.CompileResult]] = {}
    for r in results:
        groups.setdefault((r.config.name, r.config.label(), r.arch), []).append(r)
    rows = []
    for (name, label, arch), group in groups.items():
        row: Row = {
            "benchmark": "kernel_resources",
            "source": "triton",
            "kernel": name,
            "config": label,
            "target": f"sm_{arch}",
            "variants": variants.get((name, label), len(group)),
            "compiled": len(group),
            "compile_s": sum(r.seconds for r in group),
        }
        good = [r for r in group if r.ok]
        errors = [r for r in group if not r.ok]
        if not good:
            rows.append({**row, "status": "error", "note": errors[0].error})
            continue
        spilling = [r for r in good if r.spills]
        worst = min(
            good,
            key=lambda r: _occupancy_fields(r.registers, r.threads, r.smem_per_block, arch).get(
                "occupancy_pct", 0.0
            ),
        )
        local, stack = max(r.local for r in good), max(r.stack for r in good)
        status, note = "ok", ""
        if spilling:
            status = f"SPILLS ({len(spilling)}/{len(group)})"
            note = "; ".join(
                f"[{r.config.specialised() or 'declared constexprs only'}] {r.registers} regs, "
                f"local {r.local} B, stack {r.stack} B"
                for r in spilling
            )
        if errors:
            status = f"error ({len(errors)}/{len(group)})" + ("" if not spilling else f", {status}")
            note = "; ".join([errors[0].error, note]).strip("; ")
        rows.append(
            {
                **row,
                "warps": worst.num_warps,
                "stages": worst.num_stages,
                "registers": max(r.registers for r in good),
                "registers_min": min(r.registers for r in good),
                "registers_range": _span([r.registers for r in good]),
                "smem": max(r.smem_kernel for r in good),
                "local": f"{local}" if not stack else f"{local} (stack {stack})",
                "local_bytes": local,
                "stack_bytes": stack,
                **_occupancy_fields(worst.registers, worst.threads, worst.smem_per_block, arch),
                "status": status,
                "note": note,
            }
        )
    return rows


def cuda_threads(source: Path = CUDA_SOURCE) -> int:
    """Block size of the launches of ``weighted_sum_kernel.cu`` (its ``kThreads``; every launch there
    uses it, and the kernels are ``__launch_bounds__(kThreads)``)."""
    match = re.search(r"constexpr\s+int\s+kThreads\s*=\s*(\d+)\s*;", source.read_text(encoding="utf-8"))
    if not match:
        raise RuntimeError(f"{source}: no `constexpr int kThreads = N;` to read the block size from")
    return int(match.group(1))


def cuda_rows(results: Sequence[aot.CudaKernelResult]) -> list[Row]:
    rows = []
    for r in results:
        local = f"{r.local}" if not r.stack else f"{r.local} (stack {r.stack})"
        rows.append(
            {
                "benchmark": "kernel_resources",
                "source": "cuda",
                "kernel": f"{r.source}: {r.function.split('<')[0]}",
                "config": f"{r.function.partition('<')[2].rstrip('>') or '-'} threads={r.threads}",
                "target": f"sm_{r.arch}",
                "warps": r.threads // 32,
                "registers": r.registers,
                "registers_range": f"{r.registers}",
                "registers_min": r.registers,
                "smem": r.smem_kernel,
                "local": local,
                "local_bytes": r.local,
                "stack_bytes": r.stack,
                "variants": 1,
                **_occupancy_fields(r.registers, r.threads, r.smem_per_block, r.arch),
                "status": "SPILLS" if r.spills else "ok",
                "note": "local memory / stack frame in use (register spills)" if r.spills else "",
            }
        )
    return rows


def _arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kernel_resources (AOT compile of every kernel, no GPU needed)")
    group.add_argument("--aot-arch", type=int, nargs="+", default=list(aot.DEFAULT_ARCHS), metavar="SM")
    group.add_argument("--aot-precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    group.add_argument("--aot-jobs", type=int, default=None, help="compile workers (default: CPU count)")
    group.add_argument("--aot-scope", choices=("full", "test"), default="full", help="scenarios to trace")
    group.add_argument(
        "--aot-arch-step", action="store_true", help="trace the architecture step too (same launches)"
    )
    group.add_argument(
        "--aot-specializations",
        choices=("all", "first"),
        default="all",
        help="compile every JIT specialisation of each launch configuration (default), or the first only",
    )


def kernel_resource_rows(args: argparse.Namespace) -> Iterator[Row]:
    """The rows of the section: the Triton configurations, then the CUDA C++ kernels."""
    archs = list(getattr(args, "aot_arch", None) or aot.DEFAULT_ARCHS)
    if aot.cuobjdump_path() is None:
        yield {"kernel": "-", "status": "skipped", "note": "cuobjdump not found (triton/backends/nvidia/bin)"}
        return
    plan = launch_plan(scenarios(args, getattr(args, "aot_scope", "full")), progress=True)
    groups = plan.launch_configurations()
    every = getattr(args, "aot_specializations", "all") == "all"
    chosen = [c for group in groups.values() for c in (group if every else group[:1])]
    report.progress(
        f"kernel_resources: {len(plan.configs)} specialisations in {len(groups)} launch configurations "
        f"(traced in {plan.seconds:.0f} s); compiling {len(chosen)} for {', '.join(f'sm_{a}' for a in archs)}"
    )
    started = time.perf_counter()
    results = aot.compile_configs(chosen, archs, jobs=getattr(args, "aot_jobs", None))
    report.progress(f"kernel_resources: compiled in {time.perf_counter() - started:.0f} s")
    variants = {key: len(group) for key, group in groups.items()}
    rows = sorted(triton_rows(results, variants), key=lambda r: (r["kernel"], r["config"], r["target"]))
    if len(rows):
        rows[0]["_plan"] = {
            "specializations": len(plan.configs),
            "launch_configurations": len(groups),
            "compiled": len(chosen),
            "other_ops": plan.other_ops,
            "failed": plan.failed,
            "trace_s": plan.seconds,
            "compile_s": time.perf_counter() - started,
        }
    yield from rows
    if aot.nvcc_path() is None:
        yield {"kernel": CUDA_SOURCE.name, "status": "skipped", "note": "nvcc not found"}
        return
    try:
        cuda = aot.compile_cuda_source(CUDA_SOURCE, cuda_threads(), archs)
    except Exception as exc:  # keep the Triton table
        yield {"kernel": CUDA_SOURCE.name, "status": "error", "note": f"{type(exc).__name__}: {exc}"[:300]}
        return
    yield from cuda_rows(cuda)


def _footer(rows: list[Row]) -> list[str]:
    plan = next((r["_plan"] for r in rows if "_plan" in r), None)
    lines = []
    if plan:
        lines.append(
            f"{plan['launch_configurations']} launch configurations ({plan['specializations']} JIT "
            f"specialisations) traced in {plan['trace_s']:.0f} s; {plan['compiled']} compiled per target "
            f"in {plan['compile_s']:.0f} s. `variants`: the specialisations of a launch configuration "
            "(runtime ints equal to 1 folded, alignment), one of which is compiled unless "
            "`--aot-specializations all`."
        )
        if plan.get("failed"):
            lines.append(
                "Scenarios whose step raised (their launches until then are included): "
                + "; ".join(f"{name}: {error}" for name, error in plan["failed"].items())
                + "."
            )
        if plan["other_ops"]:
            lines.append(
                "Operators without Triton kernels also called (CUDA C++ extension, rows `*.cu`): "
                + ", ".join(f"`{op}`" for op in sorted(plan["other_ops"]))
                + "."
            )
    bad = [r for r in rows if _is_bad(r.get("status"))]
    lines.append(
        "Occupancy: blocks/SM = min(registers: 64K per SM in 256-register warp units, shared memory: "
        "164 KB (sm_80) / 228 KB (sm_90) per SM with the 1 KB per-block system reserve, 64 warps, 32 "
        "blocks); warps/SM = blocks x warps per block; occupancy = warps/SM / 64. smem B: the kernel's "
        "own shared memory per block (Triton's dynamic + the cubin's static, the reserve excluded); "
        "local B: local memory per thread (stack frame in brackets). num_stages is Triton's default 3 "
        "everywhere (no launcher sets it)."
    )
    if bad:
        lines.append(
            "**Not clean:** "
            + "; ".join(
                f"{r['kernel']} [{r.get('config', '')}] {r.get('target', '')}: {r['status']}" for r in bad
            )
            + "."
        )
    return lines


def kernel_resources_section() -> Section:
    """The ``kernel_resources`` section of ``benchmarks/run.py``."""
    return Section(
        name="kernel_resources",
        title="Kernel resources (AOT, no GPU): registers, shared/local memory, occupancy on sm_80 / sm_90",
        columns=(
            KERNEL,
            Column("config"),
            TARGET,
            Column("warps"),
            Column("registers_range", "regs"),
            Column("smem", "smem B"),
            Column("local", "local B"),
            Column("blocks_per_sm", "blocks/SM"),
            Column("warps_per_sm", "warps/SM"),
            Column("occupancy_pct", "occupancy", "{:.0f}%"),
            Column("limiter", "limited by"),
            Column("variants"),
            Column("status"),
        ),
        rows=kernel_resource_rows,
        add_arguments=_arguments,
        footer=_footer,
        default=False,  # compiles a few hundred kernels: ask for it with --only kernel_resources
    )


def representatives(
    configs: Sequence[aot.KernelConfig], every_specialization: bool = False
) -> list[aot.KernelConfig]:
    """A subset with every kernel, pointer-dtype combination and constexpr flag combination: for each,
    the launch configuration whose declared integer constexprs (block sizes, taps, term counts) have the
    largest product, i.e. the most work per program and the most register pressure (first launched on a
    tie), with its first JIT specialisation or (``every_specialization``) all of them."""
    best: dict[tuple[Any, ...], tuple[int, tuple[str, str]]] = {}
    groups: dict[tuple[str, str], list[aot.KernelConfig]] = {}
    for config in configs:
        launch = (config.name, config.label())
        groups.setdefault(launch, []).append(config)
        values = dict(config.constexprs)
        flags = tuple((n, values[n]) for n in config.declared if isinstance(values[n], bool))
        size = 1
        for n in config.declared:
            if isinstance(values[n], int) and not isinstance(values[n], bool):
                size *= max(1, values[n])
        key = (config.name, config.dtypes(), flags, config.options)
        if key not in best or size > best[key][0]:
            best[key] = (size, launch)
    return [
        c
        for _, launch in best.values()
        for c in (groups[launch] if every_specialization else groups[launch][:1])
    ]


def summary_rows(rows: Sequence[Row]) -> list[Row]:
    """One row per kernel and target: configurations, register range, largest shared memory, lowest
    occupancy, and how many configurations spill or fail."""
    out: dict[tuple[str, str], Row] = {}
    for r in rows:
        if "target" not in r:
            continue
        key = (r["kernel"], r["target"])
        s = out.setdefault(
            key,
            {
                "kernel": r["kernel"],
                "target": r["target"],
                "configs": 0,
                "spills": 0,
                "errors": 0,
                "_regs": [],
                "_smem": [],
                "_occ": [],
            },
        )
        s["configs"] += 1
        s["spills"] += "SPILLS" in str(r.get("status", ""))
        s["errors"] += str(r.get("status", "")).startswith("error")
        if "registers" not in r:  # nothing compiled
            continue
        s["_regs"] += [r["registers_min"], r["registers"]]
        s["_smem"].append(r["smem"])
        if r.get("occupancy_pct") is not None:
            s["_occ"].append(r["occupancy_pct"])
    for s in out.values():
        regs, smem, occ = s.pop("_regs"), s.pop("_smem"), s.pop("_occ")
        s["registers"] = f"{min(regs)}-{max(regs)}" if regs and min(regs) != max(regs) else (regs or ["-"])[0]
        s["smem_max"] = max(smem) if smem else None
        s["occupancy_min"] = min(occ) if occ else None
    return sorted(out.values(), key=lambda s: (s["kernel"], s["target"]))


#: The columns of :func:`summary_rows` (the per-kernel table of ``benchmarks/README.md``).
SUMMARY_COLUMNS: tuple[Column, ...] = (
    KERNEL,
    TARGET,
    Column("configs"),
    Column("registers", "regs"),
    Column("smem_max", "max smem B"),
    Column("occupancy_min", "min occupancy", "{:.0f}%"),
    Column("spills", "spilling"),
    Column("errors", "not compiling"),
)
