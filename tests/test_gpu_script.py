"""benchmarks/gpu.py (what benchmarks/gpu_all.sh runs on a lent GPU): every planned command parses, the
full and quick plans hold what the GPU run needs, and the summary is written and printed whatever the
pieces do (succeed, fail, time out, no longer fit the budget)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import gpu
from benchmarks import run as bench_run
from fastnas.cli import build_parser as fastnas_parser


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_command_parses(tmp_path: Path, quick: bool) -> None:
    pieces = gpu.plan(tmp_path, quick)
    names = " / ".join(p.name for p in pieces)
    for wanted in ("build extension", "kernel tests", "kernels", "search step (first order)", "CIFAR-10"):
        assert wanted in names, names
    assert ("search step (second order)" in names) == (not quick)
    assert ("search step (torch.compile)" in names) == (not quick)
    for piece in pieces:
        command = piece.command
        if command[1:3] == ["-m", "benchmarks.run"]:
            args = bench_run.build_parser().parse_args(command[3:])
            assert args.device == "cuda" and args.json == piece.json_path
            if "search step (first order)" in piece.name:
                assert set(args.mode) == {"eager", "graph"}
            if "torch.compile" in piece.name:
                assert args.mode == ["compile"] and not quick
        elif command[1:3] == ["-m", "fastnas"]:
            argv = command[3:]
            fastnas_parser(argv).parse_args(argv)
        elif command[1:3] == ["-m", "pytest"]:
            tests = [a for a in command if a.startswith("tests/")]
            assert tests and all((REPO_ROOT / t).is_file() for t in tests)
    budget = gpu.QUICK_BUDGET_S if quick else gpu.FULL_BUDGET_S
    assert budget <= (180 if quick else 480)


def test_the_report_is_written_whatever_the_pieces_do(tmp_path: Path) -> None:
    py = sys.executable
    pieces = [
        gpu.Piece("works", [py, "-c", "print('# fastnas benchmarks'); print('| a |')"], 30.0, markdown=True),
        gpu.Piece("fails", [py, "-c", "import sys; print('boom'); sys.exit(3)"], 30.0),
        gpu.Piece("hangs", [py, "-c", "import time; time.sleep(60)"], 3.0),
        gpu.Piece("too late", [py, "-c", "print('never')"], 30.0),
    ]
    outcomes: list[gpu.Outcome] = []
    # 11.5 s after the reserve: the first two start (>= 10 s left), the third is cut at its 3 s, and
    # then less than 10 s is left for the last one
    used = gpu.run_all(pieces, 11.5 + gpu.RESERVE_S, tmp_path, outcomes)
    statuses = [o.status for o in outcomes]
    assert statuses[:3] == ["ok", "failed (rc 3)", "timeout (3 s)"]
    assert statuses[3] == "skipped (budget)", statuses
    assert used < 30
    text = gpu.write_report(outcomes, 20.0, used, tmp_path)
    for name, status in zip(("works", "fails", "hangs", "too late"), statuses, strict=True):
        assert f"| {name} | {status} |" in text
    assert "| fails | failed (rc 3) |" in text and "boom" in text  # the last line of its output
    assert "## works\n\n# fastnas benchmarks\n| a |" in text
    payload = json.loads((tmp_path / "gpu_all.json").read_text())
    assert [p["status"] for p in payload["pieces"]] == statuses
    assert (tmp_path / "gpu_all.md").read_text() == text
    assert (tmp_path / "fails.log").read_text().strip() == "boom"
