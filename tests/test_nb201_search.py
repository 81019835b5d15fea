"""DARTS on the NAS-Bench-201 space through the shared search loop, scored by the results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, require_shared

from fastnas import SearchConfig, run_search
from fastnas.cli import main
from fastnas.nb201 import NB201Arch, NB201Table

TABLE = SHARED_DATA / "nb201.csv"


def _config(tmp_path: Path, **overrides: object) -> SearchConfig:
    values: dict[str, object] = {
        "space": "nb201",
        "dataset": "digits",
        "limit": 32,
        "batch_size": 16,
        "C": 4,
        "layers": 1,
        "epochs": 2,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "run_name": "nb",
    }
    values.update(overrides)
    return SearchConfig(**values)  # type: ignore[arg-type]


def test_search_on_nb201_logs_table_accuracy_each_epoch(tmp_path: Path) -> None:
    require_shared(TABLE)
    result = run_search(_config(tmp_path, nb201_table=str(TABLE)), progress=False)
    assert isinstance(result.genotype, NB201Arch)
    arch = NB201Arch.parse((result.run_dir / "genotype.txt").read_text().strip())
    assert arch == result.genotype
    table = NB201Table.from_csv(TABLE)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        expected = table.lookup(row["genotype"])
        assert row["table"]["c10_test"] == expected.c10_test
        assert row["skip_connect_count"] == NB201Arch.parse(row["genotype"]).count_op("skip_connect")
    assert result.model.algorithm.alphas["cell"].shape == (6, 5)


def test_nb201_space_rejects_darts_only_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--nodes"):
        run_search(_config(tmp_path, nodes=3), progress=False)
    with pytest.raises(ValueError, match="--space nb201"):
        run_search(_config(tmp_path, space="darts", nb201_table=str(TABLE)), progress=False)


def test_sweep_command_reports_table_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_shared(TABLE)
    args = [
        "sweep",
        "--space",
        "nb201",
        "--dataset",
        "digits",
        "--limit",
        "32",
        "--batch-size",
        "16",
        "--C",
        "4",
        "--layers",
        "1",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--seeds",
        "0",
        "1",
        "--nb201-table",
        str(TABLE),
        "--out-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(args) == 0
    assert "| darts | 2 |" in capsys.readouterr().out
    result = json.loads((tmp_path / "summary.json").read_text())
    (entry,) = result["summary"]
    assert entry["runs"] == 2 and "c10_test" in entry
    values = [r["c10_test"] for r in result["runs"]]
    assert entry["c10_test"]["mean"] == pytest.approx(sum(values) / 2)
    assert "c10_test" in (tmp_path / "summary.md").read_text()
