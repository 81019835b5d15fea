"""Kill -9 at exact write points, then ``--resume``: the run ends as an uninterrupted one does.

A ``fastnas search`` subprocess loads ``tests/fault_injection/sitecustomize.py``, which SIGKILLs it at the
N-th ``os.replace`` or ``os.fsync`` (the temporary file of an atomic write, the rename, the two renames of
a checkpoint rotation, an appended history line). The run is then resumed (or, if the kill came before its
``config.json`` existed, started again with the same command) and must give the uninterrupted run's
architecture history, metrics (times aside) and genotype bit for bit. CI runs a few points of a DARTS
search; the whole matrix (every write point of every method) is marked ``slow`` and runs with
``FASTNAS_KILL_MATRIX=1 python -m pytest tests/test_kill_matrix.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FAULTS = Path(__file__).parent / "fault_injection"
COMMON = ["--dataset", "digits", "--limit", "32", "--batch-size", "8", "--C", "4", "--layers", "3"]
COMMON += ["--epochs", "2", "--seed", "3", "--device", "cpu", "--no-progress", "--run-name", "run"]
METHODS: dict[str, list[str]] = {
    "darts": [],
    "pc-darts": ["--arch-start-epoch", "1"],
    "edas": ["--warmup-epochs", "1"],
    "ddsas": ["--subspace-ops", "20", "--resample-every", "1"],
    "entrannas": [],
    "pdarts": ["--stage-epochs", "1,1", "--stage-layers", "3,4", "--keep-ops", "4,1", "--warmup-epochs", "0",
               "--skip-dropout", "0.1,0.4"],
}  # fmt: skip
MEASURED = {"data_wait_s", "epoch_time_s", "images_per_s", "peak_memory_mb"}  # differ from run to run


def search(
    out: Path, method: str, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "fastnas", "search", "--method", method, *COMMON, *METHODS[method]]
    args += ["--out-dir", str(out)]
    if method == "pdarts":  # its stages give the epochs and layers
        for flag in ("--epochs", "--layers"):
            i = args.index(flag)
            del args[i : i + 2]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def base_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore", **extra}


def outcome(run: Path) -> dict[str, Any]:
    """What must not depend on a kill: the histories (times aside) and the genotype."""

    def rows(name: str) -> list[Any]:
        path = run / name
        if not path.exists():
            return []
        return [
            {k: v for k, v in json.loads(line).items() if k not in MEASURED}
            for line in path.read_text().splitlines()
        ]

    return {
        "metrics": rows("metrics.jsonl"),
        "alphas": rows("alphas.jsonl"),
        "sampling": rows("sampling.jsonl"),
        "genotype": json.loads((run / "genotype.json").read_text()),
    }


_REFERENCES: dict[str, tuple[dict[str, Any], dict[str, int]]] = {}


def reference(method: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, int]]:
    """The uninterrupted run of ``method`` and how many write points it passed (computed once)."""
    if method not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"reference-{method}")
        counts = out / "counts.json"
        search(out, method, base_env(FASTNAS_TEST_COUNT_WRITES=str(counts)))
        _REFERENCES[method] = (outcome(out / "run"), json.loads(counts.read_text()))
    return _REFERENCES[method]


def kill_and_resume(tmp_path: Path, method: str, point: str) -> dict[str, Any]:
    killed = search(tmp_path, method, base_env(FASTNAS_TEST_KILL_AT=point), check=False)
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
    run = tmp_path / "run"
    if (run / "config.json").exists():
        args = [sys.executable, "-m", "fastnas", "search", "--resume", str(run), "--no-progress"]
        done = subprocess.run(args, env=base_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (point, done.stderr[-3000:])
    else:  # killed before the run existed: the same command starts it again
        search(tmp_path, method, base_env())
    return outcome(run)


def differences(got: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``file[row].key`` of every value that differs (empty: the same run)."""
    out = [
        name
        for name in expected
        if name not in ("metrics", "alphas", "sampling") and got[name] != expected[name]
    ]
    for name in ("metrics", "alphas", "sampling"):
        if len(got[name]) != len(expected[name]):
            out.append(f"{name}: {len(got[name])} rows, expected {len(expected[name])}")
            continue
        for i, (a, b) in enumerate(zip(got[name], expected[name], strict=True)):
            out += [f"{name}[{i}].{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def points(counts: dict[str, int]) -> list[str]:
    return [f"{name}:{i}" for name, n in counts.items() for i in range(1, n + 1)]


def test_a_kill_between_checkpoint_renames_resumes_to_the_uninterrupted_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The middle ``os.replace`` of a 2-epoch DARTS run: a rename of the first epoch's checkpoint rotation or
    history (the CI point; every point of every method is the slow matrix below)."""
    expected, counts = reference("darts", tmp_path_factory)
    assert counts["replace"] >= 4 and counts["fsync"] >= 4  # checkpoints, histories, config
    point = f"replace:{(counts['replace'] + 1) // 2}"
    assert differences(kill_and_resume(tmp_path, "darts", point), expected) == [], point


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FASTNAS_KILL_MATRIX") != "1",
    reason="the whole kill matrix (every write point of 6 methods, ~15 min on 2 cores) runs with "
    "FASTNAS_KILL_MATRIX=1; CI runs the DARTS points above",
)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_write_point_of_every_method(tmp_path_factory: pytest.TempPathFactory, method: str) -> None:
    expected, counts = reference(method, tmp_path_factory)
    failures = []
    for point in points(counts):
        got = kill_and_resume(tmp_path_factory.mktemp(f"{method}-{point.replace(':', '-')}"), method, point)
        if differences(got, expected):
            failures.append(f"{point}: {differences(got, expected)[:3]}")
    assert not failures, f"{method}: {len(failures)} of {len(points(counts))} kill points differ: {failures}"
