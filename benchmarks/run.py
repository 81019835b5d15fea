"""Run every registered benchmark, print markdown tables and optionally write JSON.

    python -m benchmarks.run --device auto --batch-sizes 64 256 --precision fp32 bf16 --order 1 2 \\
        --C 16 --layers 8 --json out.json

A benchmark is a :class:`~benchmarks.report.Section` registered in :data:`SECTIONS` with :func:`register`:
its own command-line options, a generator of result rows (plain dicts) and the columns of its table. The
search-step, P-DARTS-stage, per-method, input-pipeline and per-kernel sections are defined here; the
launch count (``benchmarks/launches.py``) and the kernel resources (``benchmarks/kernel_resources.py``)
build their sections in their own modules. Sections without ``default`` run only when named with
``--only NAME ...``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import torch

from benchmarks.kernel_resources import kernel_resources_section
from benchmarks.launches import launches_section
from benchmarks.report import Column, Row, Section, markdown_table, progress, section_markdown
from benchmarks.step import (
    MODES,
    build_search_step,
    environment,
    executor_names,
    measure_search_step,
    method_names,
    mode_unsupported_reason,
    stage_space,
    unsupported_reason,
)
from fastnas.train.device import PRECISIONS, resolve_device

__all__ = ["SECTIONS", "Column", "Row", "Section", "build_parser", "format_report", "main", "markdown_table"]

P = ParamSpec("P")

# Columns several sections share.
BATCH = Column("batch_size", "batch")
PRECISION = Column("precision")
MEDIAN_MS = Column("median_ms", "median ms", "{:.2f}")
IMAGES_PER_S = Column("images_per_s", "img/s", "{:.1f}")
PEAK_MIB = Column("peak_mem_mb", "peak MiB", "{:.1f}")
NOTE = Column("note")

#: Registered benchmarks, in report order.
SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add ``section`` to the report (its name must be new)."""
    if section.name in SECTIONS:
        raise ValueError(f"benchmark section {section.name!r} is already registered")
    SECTIONS[section.name] = section
    return section


def guarded(case: Row, measure: Callable[P, Row], *args: P.args, **kwargs: P.kwargs) -> Row:
    """``measure(*args, **kwargs)`` with ``status`` ok, or ``case`` with ``status`` oom / error where it
    raised."""
    try:
        return {**measure(*args, **kwargs), "status": "ok", "note": ""}
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {**case, "status": "oom", "note": "out of memory"}
    except Exception as exc:  # keep the grid going; the exit status reports it
        traceback.print_exc()
        return {**case, "status": "error", "note": f"{type(exc).__name__}: {exc}"}


def _measure(args: argparse.Namespace, **overrides: Any) -> Row:
    """:func:`measure_search_step` with the report's shared options (device, shape, timing, seed) and
    the first batch size and precision, ``overrides`` taking precedence."""
    settings: dict[str, Any] = {
        "batch_size": args.batch_sizes[0],
        "device": args.device,
        "precision": args.precision[0],
        "C": args.C,
        "layers": args.layers,
        "image_size": args.image_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
    }
    return measure_search_step(**{**settings, **overrides})


# ----------------------------------------------------------------------------- search step
def _search_step_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search_step (one full bilevel search iteration)")
    group.add_argument("--batch-sizes", type=int, nargs="+", default=[64], metavar="N")
    group.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS)
    group.add_argument("--order", type=int, nargs="+", default=[1], choices=(1, 2))
    group.add_argument(
        "--executor",
        nargs="+",
        default=["reference"],
        help=f"cell executors to compare: {', '.join(executor_names())}, or plain (the reference executor "
        "with every op forced to its PyTorch reference: the plain baseline)",
    )
    group.add_argument(
        "--mode",
        nargs="+",
        default=["eager"],
        choices=MODES,
        help="how each iteration runs: eager; compile (both levels through torch.compile, as fastnas search "
        "--compile; the warm-up iterations compile); graph (the first-order iteration replayed from a CUDA "
        "graph, as --cuda-graph; CUDA only, other devices report the row unsupported with the reason)",
    )
    group.add_argument("--method", default="darts", help=f"one of {', '.join(method_names())}")
    group.add_argument("--C", type=int, default=16, help="initial channels")
    group.add_argument("--layers", type=int, default=8, help="cells in the supernet")
    group.add_argument("--image-size", type=int, default=32)
    group.add_argument(
        "--reference-ops",
        action="store_true",
        help="force the plain PyTorch reference ops (fastnas.backend.force_reference)",
    )


def _search_step_rows(args: argparse.Namespace) -> Iterator[Row]:
    grid = itertools.product(args.mode, args.executor, args.order, args.precision, args.batch_sizes)
    device = resolve_device(args.device)
    for mode, executor, order, precision, batch_size in grid:
        case = {
            "benchmark": "search_step",
            "mode": mode,
            "executor": executor,
            "order": order,
            "precision": precision,
            "batch_size": batch_size,
        }
        progress(f"search_step: {case}")
        plain = executor == "plain"
        reason = unsupported_reason(precision, order) or mode_unsupported_reason(
            mode, device, args.method, order, precision
        )
        if reason:
            yield {**case, "status": "skipped", "note": reason}
            continue
        row = guarded(
            case,
            _measure,
            args,
            batch_size=batch_size,
            precision=precision,
            order=order,
            executor="reference" if plain else executor,
            method=args.method,
            reference_ops=args.reference_ops or plain,
            mode=mode,
        )
        if plain and row.get("status") == "ok":
            row["executor"] = "plain"  # the reference executor with every op forced to PyTorch
        yield row


def _search_step_footer(rows: list[Row]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return []
    r = ok[0]
    return [
        f"Supernet: {r['method']} C={r['C']} layers={r['layers']}, {r['image_size']}x{r['image_size']} "
        f"random images; {r['warmup']} warm-up + {r['repeats']} timed iterations; "
        "reference ops forced: "
        + ("only in `plain` rows" if any(x["executor"] == "plain" for x in ok) else str(r["reference_ops"]))
        + ".",
        f"Memory: {r['mem_measure']}.",
    ]


register(
    Section(
        name="search_step",
        title="Search step (architecture step + weight step)",
        columns=(
            Column("mode"),
            Column("executor"),
            Column("order"),
            PRECISION,
            BATCH,
            MEDIAN_MS,
            Column("p10_ms", "p10 ms", "{:.2f}"),
            Column("p90_ms", "p90 ms", "{:.2f}"),
            IMAGES_PER_S,
            PEAK_MIB,
            NOTE,
        ),
        rows=_search_step_rows,
        add_arguments=_search_step_arguments,
        footer=_search_step_footer,
    )
)


# ----------------------------------------------------------------------------- P-DARTS stages
def _pdarts_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pdarts_stages (one search step per P-DARTS stage)")
    group.add_argument("--pdarts-layers", type=int, nargs="+", default=[5, 11, 17], metavar="N")
    group.add_argument("--pdarts-ops", type=int, nargs="+", default=[8, 5, 3], metavar="K")


def _pdarts_rows(args: argparse.Namespace) -> Iterator[Row]:
    if len(args.pdarts_layers) != len(args.pdarts_ops):
        raise SystemExit("--pdarts-layers and --pdarts-ops need one entry per stage")
    for stage, (layers, ops) in enumerate(zip(args.pdarts_layers, args.pdarts_ops, strict=True), start=1):
        case = {"benchmark": "pdarts_stage", "stage": stage, "layers": layers, "ops_per_edge": ops}
        progress(f"pdarts_stages: {case}")
        row = guarded(case, _measure, args, layers=layers, method="pdarts", space=stage_space(ops, args.seed))
        yield {**row, **case}


register(
    Section(
        name="pdarts_stages",
        title="P-DARTS stages (search step at each stage's depth and candidate count)",
        columns=(
            Column("stage"),
            Column("layers", "cells"),
            Column("ops_per_edge", "ops/edge"),
            BATCH,
            PRECISION,
            MEDIAN_MS,
            IMAGES_PER_S,
            PEAK_MIB,
            NOTE,
        ),
        rows=_pdarts_rows,
        add_arguments=_pdarts_arguments,
        default=False,  # three supernets of up to 17 cells: ask for it with --only pdarts_stages
    )
)


# ----------------------------------------------------------------------------- methods side by side
def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "methods (one search step per method and --executor / --precision, against DARTS and plain)"
    )
    group.add_argument(
        "--methods",
        nargs="+",
        default=list(method_names()),
        metavar="METHOD",
        help=f"any of {', '.join(method_names())} (default: every registered method)",
    )


def _methods_rows(args: argparse.Namespace) -> Iterator[Row]:
    """One search step of each method, executor and precision at one shape (the first batch size);
    ``time / DARTS`` compares methods (same executor and precision), ``time / plain`` executors (same
    method and precision; <1: cheaper). A method that refuses an executor (EnTranNAS: fast) is a row
    saying why."""
    rows = []
    for method, precision, executor in itertools.product(args.methods, args.precision, args.executor):
        case = {
            "benchmark": "methods",
            "method": method,
            "executor": executor,
            "precision": precision,
            "batch_size": args.batch_sizes[0],
        }
        progress(f"methods: {case}")
        plain = executor == "plain"
        row = guarded(
            case,
            _measure,
            args,
            method=method,
            precision=precision,
            executor="reference" if plain else executor,
            reference_ops=plain,
        )
        row.update(executor=executor)
        rows.append(row)
    ok = {(r["method"], r["executor"], r["precision"]): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            yield row
            continue
        darts = ok.get(("darts", row["executor"], row["precision"]))
        plain_row = ok.get((row["method"], "plain", row["precision"]))
        if darts is not None:
            row["time_vs_darts"] = row["median_ms"] / darts["median_ms"]
            row["mem_vs_darts"] = row["peak_mem_mb"] / darts["peak_mem_mb"] if darts["peak_mem_mb"] else None
        if plain_row is not None:
            row["time_vs_plain"] = row["median_ms"] / plain_row["median_ms"]
        yield row


register(
    Section(
        name="methods",
        title="One search step per method, executor and precision at one shape (PC-DARTS K=4, DDSAS L=28)",
        columns=(
            Column("method"),
            Column("executor"),
            Column("layers", "cells"),
            Column("C"),
            BATCH,
            PRECISION,
            MEDIAN_MS,
            Column("time_vs_plain", "time / plain", "{:.3f}"),
            Column("time_vs_darts", "time / DARTS", "{:.3f}"),
            PEAK_MIB,
            Column("mem_vs_darts", "memory / DARTS", "{:.3f}"),
            NOTE,
        ),
        rows=_methods_rows,
        add_arguments=_methods_arguments,
        default=False,  # several supernets: ask for it with --only methods
    )
)


# ----------------------------------------------------------------------------- input pipelines
#: The shared 100-image ImageNet sample beside the repository (see ../shared/data/README.md).
IMAGENET_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_sample100.tar"


def _loaders_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loaders (ImageNet input pipelines against the supernet's consumption)")
    group.add_argument("--loader-data", type=Path, default=IMAGENET_SAMPLE, help="ImageNet folder or .tar")
    group.add_argument("--loader-batch", type=int, default=32, metavar="N")
    group.add_argument("--loader-epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    group.add_argument("--loader-repeat", type=int, default=3, help="passes over the images per epoch")
    group.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers / DALI threads")
    group.add_argument("--loader-image-size", type=int, default=224)
    group.add_argument("--loaders", nargs="+", default=["torch", "dali"], choices=("torch", "dali"))


def _supernet_row(args: argparse.Namespace, device: torch.device, case: Row) -> Row:
    """The DARTS search step on the ImageNet supernet (ImageNet stem, 100 classes, ``--C``/``--layers``)
    at the pipelines' batch and image size: the images per second the supernet consumes."""
    from benchmarks.step import CpuMemoryProbe, CudaMemoryProbe, run_timed, summarize

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    probe = CudaMemoryProbe(device) if device.type == "cuda" else CpuMemoryProbe()
    step = build_search_step(
        args.loader_batch,
        device,
        args.precision[0],
        C=args.C,
        layers=args.layers,
        image_size=args.loader_image_size,
        seed=args.seed,
        num_classes=100,
        stem="imagenet",
    )
    times = run_timed(step, device, args.warmup, args.repeats, probe)
    stats = summarize(times)
    seconds = stats["median_ms"] / 1e3
    # one search step reads a weight batch and an architecture batch: 2 x batch images
    return {**case, **stats, "images": 2 * args.loader_batch, "seconds": seconds,
            "images_per_s": 2 * args.loader_batch / seconds, "precision": args.precision[0]}  # fmt: skip


def _loader_row(args: argparse.Namespace, device: torch.device, case: Row, folder: Any) -> Row:
    """Images/s of one pipeline over ``--loader-epochs`` epochs (each a new shuffle and, for DALI, a new
    pipeline; a warm-up epoch first), batches delivered on ``device``."""
    import time

    from torch.utils.data import Subset

    from fastnas.data.imagenet import FolderBatchLoader

    indices = list(range(len(folder))) * args.loader_repeat
    common = {"shuffle": True, "seed": args.seed, "device": device, "workers": args.loader_workers}
    if case["pipeline"] == "dali":
        from fastnas.data.dali import DaliFolderLoader, folder_file_list

        files, labels = folder_file_list(Subset(folder, indices))
        size = args.loader_image_size
        loader: Any = DaliFolderLoader(
            files, labels, args.loader_batch, train=True, image_size=size, **common
        )
    else:
        loader = FolderBatchLoader(Subset(folder, indices), args.loader_batch, **common)
    images, elapsed = 0, 0.0
    for epoch in range(args.loader_epochs + 1):
        loader.set_epoch(epoch)
        started = time.perf_counter()
        count = 0
        for x, _ in loader:
            count += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:  # epoch 0 warms up (worker processes, DALI libraries, file cache)
            images, elapsed = images + count, elapsed + time.perf_counter() - started
    return {**case, "images": images, "seconds": elapsed, "images_per_s": images / elapsed}


def _loaders_rows(args: argparse.Namespace) -> Iterator[Row]:
    """The supernet's consumption first, then each pipeline with its ratio to it (>= 1.5 is the goal)."""
    from fastnas.data.dali import dali_available
    from fastnas.data.imagenet import imagenet_transform, load_imagenet_folder

    device = resolve_device(args.device)
    base = {"benchmark": "loaders", "device": str(device), "batch_size": args.loader_batch,
            "image_size": args.loader_image_size}  # fmt: skip
    case = {**base, "pipeline": "supernet", "workers": None}
    progress(f"loaders: {case}")
    supernet = guarded(case, _supernet_row, args, device, case)
    supernet["note"] = supernet["note"] or f"DARTS C={args.C} {args.layers} cells, ImageNet stem"
    yield supernet
    folder = None
    if args.loader_data.exists():
        folder = load_imagenet_folder(args.loader_data, "train")
        folder.transform = imagenet_transform(True, args.loader_image_size)
    for name in args.loaders:
        case = {**base, "pipeline": name, "workers": args.loader_workers}
        progress(f"loaders: {case}")
        if folder is None:
            yield {**case, "status": "skipped", "note": f"no ImageNet data at {args.loader_data}"}
            continue
        if name == "dali" and not dali_available():
            yield {**case, "status": "skipped", "note": "NVIDIA DALI is not installed"}
            continue
        row = guarded(case, _loader_row, args, device, case, folder)
        if row["status"] == "ok" and supernet["status"] == "ok":
            row["vs_supernet"] = row["images_per_s"] / supernet["images_per_s"]
        yield row


def _loaders_footer(rows: list[Row]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok" and r["pipeline"] != "supernet"]
    lines = [
        "Pipelines: the train transforms (RandomResizedCrop, flip, colour jitter, normalise) over the "
        "ImageNet sample (`--loader-data`), shuffled per epoch, batches delivered on the device; "
        "`torch` = FolderBatchLoader (PIL, DataLoader workers), `dali` = DaliFolderLoader "
        "(nvJPEG + GPU ops on CUDA, DALI CPU ops otherwise); img/s over the timed epochs after a warm-up "
        "epoch, epoch start-up included.",
        "Supernet: one DARTS search step (architecture + weight step) on random batches; it reads two "
        "batches per step, so its img/s is 2 x batch / median step time. `x supernet` = pipeline img/s "
        "over that (goal >= 1.5).",
    ]
    if ok and ok[0]["device"] == "cpu":
        lines.append("On a CPU device the pipelines and the supernet share the same cores.")
    return lines


register(
    Section(
        name="loaders",
        title="ImageNet input pipelines (train transforms) against the supernet's consumption",
        columns=(
            Column("pipeline"),
            Column("device"),
            BATCH,
            Column("image_size", "size"),
            Column("workers"),
            Column("images"),
            Column("seconds", "seconds", "{:.2f}"),
            IMAGES_PER_S,
            Column("vs_supernet", "x supernet", "{:.2f}"),
            NOTE,
        ),
        rows=_loaders_rows,
        add_arguments=_loaders_arguments,
        footer=_loaders_footer,
        default=False,  # decodes the ImageNet sample several times: ask for it with --only loaders
    )
)


# ----------------------------------------------------------------------------- kernels
def _kernel_rows(args: argparse.Namespace) -> Iterator[Row]:
    from benchmarks.kernel_bench import KERNEL_CASES, kernel_rows

    device = resolve_device(args.device)
    kernels = args.kernels or list(KERNEL_CASES)
    progress(f"kernels: {', '.join(kernels)}")
    yield from kernel_rows(kernels, args.batch_sizes, args.precision, device, args.warmup, args.repeats)


def _kernel_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("kernels (fused ops against their PyTorch reference)")
    group.add_argument("--kernels", nargs="+", default=None, metavar="NAME", help="default: all")


register(
    Section(
        name="kernels",
        title="Fused kernels vs the PyTorch reference and torch.compile (forward + backward)",
        columns=(
            Column("kernel"),
            Column("impl"),
            PRECISION,
            BATCH,
            Column("C"),
            Column("size", "HxW"),
            Column("median_ms", "median ms", "{:.3f}"),
            Column("gb_per_s", "GB/s", "{:.0f}"),
            NOTE,
        ),
        rows=_kernel_rows,
        add_arguments=_kernel_arguments,
    )
)

# Counted and compiled without a GPU: launches and bytes of a search step, kernel resources.
register(launches_section())
register(kernel_resources_section())


# ----------------------------------------------------------------------------- report
def format_report(env: Row, results: dict[str, list[Row]]) -> str:
    """The whole report: an environment line, then one titled table per section."""
    parts = [
        f"# fastnas benchmarks\n\nDevice: {env['device_name']} ({env['device']}); torch "
        f"{env['torch_version']}; CUDA {env['cuda_version'] or 'none'}; "
        f"torch CPU threads: {env['num_threads']}."
    ]
    parts += [section_markdown(SECTIONS[name], rows) for name, rows in results.items()]
    return "\n\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="write all results (with per-iteration times) here")
    for section in SECTIONS.values():
        if section.add_arguments:
            section.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections; print the report; return 1 if any case failed, else 0."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(resolve_device(args.device))
    chosen = args.only or [name for name, section in SECTIONS.items() if section.default]
    results = {name: list(SECTIONS[name].rows(args)) for name in chosen}
    print(format_report(env, results), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "environment": env,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    failed = any(r.get("status") == "error" for rows in results.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
