"""The multi-seed harness: runs, summary statistics, reuse of finished runs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fastnas import SearchConfig
from fastnas.train.sweep import parse_method, run_sweep


def test_parse_method_options() -> None:
    assert parse_method("darts") == ("darts", {})
    assert parse_method("darts:order=2,init_scale=0.01") == ("darts", {"order": 2, "init_scale": 0.01})
    with pytest.raises(ValueError, match="key=value"):
        parse_method("darts:order")
    # list values take the commas that follow them
    assert parse_method("pdarts:stage_epochs=1,1,1,keep_ops=5,3,1,warmup_epochs=0") == (
        "pdarts",
        {"stage_epochs": (1, 1, 1), "keep_ops": (5, 3, 1), "warmup_epochs": 0},
    )
    with pytest.raises(ValueError, match="not an option"):
        parse_method("pdarts:tau0=2")


def test_sweep_summarises_two_seeds(tmp_path: Path) -> None:
    base = SearchConfig(dataset="digits", limit=32, batch_size=16, C=4, layers=3, epochs=2, device="cpu")
    result = run_sweep(base, ["darts"], [0, 1], tmp_path)
    runs = result["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(len(r["skip_connect_curve"]) == 2 for r in runs)
    (entry,) = result["summary"]
    accs = [r["supernet_val_acc"] for r in runs]
    assert entry["runs"] == 2
    assert entry["supernet_val_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert entry["supernet_val_acc"]["std"] == pytest.approx(statistics.pstdev(accs))
    assert entry["wall_time_s"]["mean"] > 0
    # each run's metrics.jsonl holds the same numbers the summary used
    for r in runs:
        rows = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["val_acc"] == r["supernet_val_acc"]
    md = (tmp_path / "summary.md").read_text()
    assert "| darts | 2 |" in md and "±" in md
    assert json.loads((tmp_path / "summary.json").read_text())["summary"] == result["summary"]

    again = run_sweep(base, ["darts"], [0, 1], tmp_path)  # finished runs are reused, not redone
    assert [r["genotype"] for r in again["runs"]] == [r["genotype"] for r in runs]
    assert [r["wall_time_s"] for r in again["runs"]] == [r["wall_time_s"] for r in runs]


def test_sweep_runs_edas_and_ddsas_and_summarises_the_cosine_distance(tmp_path: Path) -> None:
    base = SearchConfig(dataset="digits", limit=32, batch_size=16, C=4, layers=3, epochs=2, device="cpu")
    methods = ["edas:warmup_epochs=1", "ddsas:subspace_ops=20,resample_every=1"]
    result = run_sweep(base, methods, [0], tmp_path)
    assert [r["method"] for r in result["runs"]] == methods
    for run, entry in zip(result["runs"], result["summary"], strict=True):
        curve = run["arch_cosine_curve"]
        assert curve[0] is None and all(0.0 <= d <= 1.0 for d in curve[1:]) and len(curve) == 2
        assert run["arch_cosine_distance"] == pytest.approx(statistics.fmean(curve[1:]))
        assert entry["arch_cosine_distance"]["mean"] == pytest.approx(run["arch_cosine_distance"])
    assert "arch_cosine_distance" in (tmp_path / "summary.md").read_text()
