"""Every GPU check and benchmark in one command that fits a lent GPU's time budget.

``python -m benchmarks.gpu`` (what ``benchmarks/gpu_all.sh`` runs) builds the CUDA extension for the local
GPU, runs the kernel tests on it, the per-kernel table, the search-step grid (plain / reference / fast,
each also under ``torch.compile`` and replayed as a CUDA graph where it applies, batch 64 and 256, fp32
and bf16, first order; second order at batch 64) and one timed CIFAR-10 search epoch from the shared
archive, in at most 8 minutes (``--budget``). ``--quick`` is a 3-minute subset.

Each piece is a subprocess with its own time limit, cut to what is left of the budget; a piece that
fails, times out or no longer fits is a row of the summary, never the end of the run. The summary table
is printed and written (``$OUT/gpu_all.md``, with every section's own table after it, and
``$OUT/gpu_all.json``, with every section's JSON rows) when the run ends, however it ends (Ctrl-C and
SIGTERM included). Needs only torch, triton and pytest (the GPU machine has no DALI and no internet).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = "cifar10_jpg.tar.gz"
FULL_BUDGET_S = 480.0
QUICK_BUDGET_S = 180.0
RESERVE_S = 5.0  # kept back for writing the report
KERNEL_TESTS = (
    "tests/test_edge_group_sum.py",
    "tests/test_conv_stage.py",
    "tests/test_pointwise_conv.py",
    "tests/test_depthwise_conv.py",
    "tests/test_bn_from_stats.py",
    "tests/test_mixed_bn_sum.py",
    "tests/test_masked_aggregate.py",
    "tests/test_weighted_sum.py",
    "tests/test_bn_running_stats.py",
)


@dataclass
class Piece:
    """One subprocess of the run: ``command`` (argv) with at most ``limit_s`` seconds; ``json_path`` is a
    benchmark section's ``--json`` output, merged into the report; ``log`` its stdout+stderr."""

    name: str
    command: list[str]
    limit_s: float
    json_path: Path | None = None
    markdown: bool = False  # whether stdout is a markdown report worth appending to the summary


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed (rc N), timeout, skipped (budget)
    seconds: float
    detail: str = ""
    output: str = ""
    rows: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bench(name: str, out: Path, limit_s: float, arguments: str) -> Piece:
    """``python -m benchmarks.run ARGUMENTS --json OUT/NAME.json`` (arguments split at spaces)."""
    json_path = out / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".json")
    command = [sys.executable, "-m", "benchmarks.run", *arguments.split(), "--json", str(json_path)]
    return Piece(name, command, limit_s, json_path=json_path, markdown=True)


def cifar_archive(shared: Path | None = None) -> Path | None:
    """The shared CIFAR-10 JPEG archive (``../shared/data`` beside the repository), if present."""
    for folder in (shared, REPO.parent / "shared" / "data", REPO / ".data"):
        if folder is not None and (folder / CIFAR_ARCHIVE).is_file():
            return folder / CIFAR_ARCHIVE
    return None


def plan(out: Path, quick: bool, device: str = "cuda", shared: Path | None = None) -> list[Piece]:
    """The pieces of a full (8-minute) or ``quick`` (3-minute) run, in order, with their own limits."""
    py = sys.executable
    pieces = [
        Piece(
            "build extension",
            [py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
            150.0,
        ),
        Piece(
            "environment",
            [
                py,
                "-c",
                "import torch, triton, fastnas._ext as e; print('GPU:', torch.cuda.get_device_name(0) if "
                "torch.cuda.is_available() else 'none', '| torch', torch.__version__, '| triton', "
                "triton.__version__, '| extension:', e.extension_available(), '| CUDA kernels:', "
                "e.cuda_compiled(), e.load_error() or '')",
            ],
            60.0,
        ),
    ]
    tests = list(KERNEL_TESTS[:3] if quick else KERNEL_TESTS)
    if not quick:
        tests += ["tests/test_fast_executor.py", "tests/test_compile.py"]
    tests = [t for t in tests if (REPO / t).is_file()]
    pytest = [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    pieces.append(Piece("kernel tests (GPU)", pytest, 90.0 if quick else 150.0))
    # every method, fast vs reference vs plain, early: the work-floor question of each method, timed
    executors = "reference fast" if quick else "plain reference fast"
    per_method = "--only methods --device {} --warmup 1 --repeats 3 --batch-sizes 64 --precision {}".format(
        device, "bf16" if quick else "fp32 bf16"
    )
    pieces.append(_bench("methods", out, 60.0 if quick else 120.0, f"{per_method} --executor {executors}"))
    batches = "64" if quick else "64 256"
    precisions = "bf16" if quick else "fp32 bf16"
    common = f"--device {device} --warmup 2 --repeats {5 if quick else 10}"
    grid = f"{common} --batch-sizes {batches} --precision {precisions}"
    pieces.append(_bench("kernels", out, 45.0 if quick else 90.0, f"--only kernels {grid}"))
    first_order = f"--only search_step {grid} --order 1 --executor {executors} {step_modes(quick)}"
    pieces.append(_bench("search step (first order)", out, 60.0 if quick else 150.0, first_order))
    if not quick:
        second_order = f"--only search_step {common} --batch-sizes 64 --precision fp32 bf16 --order 2"
        pieces.append(
            _bench("search step (second order)", out, 60.0, f"{second_order} --executor reference fast")
        )
    archive = cifar_archive(shared)
    data = str(archive) if archive else "MISSING-" + CIFAR_ARCHIVE
    epoch = [py, "-m", "fastnas", "search", "--dataset", "cifar10", "--data-dir", data]
    epoch += f"--method darts --epochs 1 --device {device} --executor fast --precision bf16".split()
    epoch += ["--out-dir", str(out / "runs"), "--run-name", "cifar10-epoch", "--overwrite", "--no-progress"]
    if quick:
        epoch += ["--limit", "10000"]
    name = "CIFAR-10 search epoch" + (" (10k images)" if quick else "")
    pieces.append(Piece(name, epoch, 60.0 if quick else 120.0))
    if not quick:
        compiled = f"--only search_step {common} --batch-sizes 64 256 --precision bf16 --order 1"
        compiled += " --executor reference fast --mode compile"
        pieces.append(_bench("search step (torch.compile)", out, 120.0, compiled))
    if not quick:  # P-DARTS' stages, where the budget still allows
        stages = f"--only pdarts_stages {common} --batch-sizes 96 --precision bf16"
        pieces.append(_bench("pdarts stages", out, 45.0, stages))
    return pieces


def step_modes(quick: bool) -> str:
    """``search_step`` modes of the first-order grid: eager and CUDA-graph replay (``--cuda-graph``). The
    ``torch.compile`` rows (``--compile``) are a piece of their own, later and smaller: every grid point
    compiles anew, and a piece cut by its time limit loses all its rows."""
    return "--mode eager graph"


def run_piece(piece: Piece, limit_s: float, log_dir: Path) -> Outcome:
    """Runs ``piece`` with at most ``limit_s`` seconds; its output goes to ``log_dir`` and the outcome."""
    started = time.monotonic()
    log = log_dir / (piece.name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(
            piece.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s, check=False
        )
        output, rc = done.stdout + done.stderr, done.returncode
        status = "ok" if rc == 0 else f"failed (rc {rc})"
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        status = f"timeout ({limit_s:.0f} s)"
    except OSError as exc:
        output, status = str(exc), "failed (could not start)"
    seconds = time.monotonic() - started
    log.write_text(output, encoding="utf-8")
    rows = None
    if piece.json_path is not None and piece.json_path.is_file():
        try:
            rows = json.loads(piece.json_path.read_text(encoding="utf-8")).get("results")
        except (OSError, ValueError):
            rows = None
    lines = [line for line in output.strip().splitlines() if line.strip()]
    detail = lines[-1][:160] if lines else ""
    return Outcome(piece.name, status, seconds, detail, output if piece.markdown else "", rows)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def summary_table(outcomes: Sequence[Outcome]) -> str:
    lines = ["| piece | status | seconds | last line |", "|---|---|---|---|"]
    for o in outcomes:
        detail = o.detail.replace("|", "\\|")
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {detail} |")
    return "\n".join(lines)


def report(outcomes: Sequence[Outcome], budget_s: float, elapsed_s: float) -> str:
    """The summary table, then every benchmark section's own markdown tables."""
    parts = [
        f"# fastnas GPU run\n\nBudget {budget_s:.0f} s, used {elapsed_s:.0f} s.\n\n{summary_table(outcomes)}"
    ]
    for o in outcomes:
        tables = _markdown_part(o.output)
        if tables:
            parts.append(f"## {o.name}\n\n{tables}")
    return "\n\n".join(parts) + "\n"


def _markdown_part(output: str) -> str:
    """The benchmark report inside a piece's output (from its ``# fastnas benchmarks`` heading on)."""
    start = output.find("# fastnas benchmarks")
    return output[start:].strip() if start >= 0 else ""


def run_all(pieces: Sequence[Piece], budget_s: float, out: Path, outcomes: list[Outcome]) -> float:
    """Runs ``pieces`` in order within ``budget_s``, appending one outcome per piece to ``outcomes`` (so an
    interrupt keeps those done); returns the time used. A piece gets ``min(its limit, what is left -
    RESERVE_S)``; below 10 s it is skipped."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for piece in pieces:
        left = budget_s - (time.monotonic() - started) - RESERVE_S
        if left < 10.0:
            outcomes.append(Outcome(piece.name, "skipped (budget)", 0.0))
            continue
        print(f"[gpu] {piece.name} (at most {min(piece.limit_s, left):.0f} s)", flush=True)
        outcome = run_piece(piece, min(piece.limit_s, left), out)
        print(f"[gpu] {piece.name}: {outcome.status} in {outcome.seconds:.1f} s", flush=True)
        outcomes.append(outcome)
    return time.monotonic() - started


def write_report(outcomes: Sequence[Outcome], budget_s: float, elapsed_s: float, out: Path) -> str:
    text = report(outcomes, budget_s, elapsed_s)
    (out / "gpu_all.md").write_text(text, encoding="utf-8")
    payload = {
        "budget_s": budget_s,
        "elapsed_s": elapsed_s,
        "pieces": [
            {"name": o.name, "status": o.status, "seconds": o.seconds, "detail": o.detail, "results": o.rows}
            for o in outcomes
        ],
    }
    (out / "gpu_all.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the 3-minute subset")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 480, quick 180)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-out"),
                        help="results folder (default $OUT, else bench-out)")  # fmt: skip
    parser.add_argument("--device", default="cuda", help="device of the benchmarks (default cuda)")
    parser.add_argument("--shared", type=Path, help="the shared data folder (default ../shared/data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plan; print and write the report whatever happens; 1 if some piece did not succeed."""
    args = build_parser().parse_args(argv)
    budget = args.budget or (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pieces = plan(out, args.quick, args.device, args.shared)
    outcomes: list[Outcome] = []
    started = time.monotonic()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_all(pieces, budget, out, outcomes)
    except KeyboardInterrupt:
        outcomes.append(Outcome("(interrupted)", "interrupted", 0.0))
    finally:
        text = write_report(outcomes, budget, time.monotonic() - started, out)
        print(text, flush=True)
    return 0 if outcomes and all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
