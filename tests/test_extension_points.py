"""Extension points: an executor or a supernet option added from outside fastnas reaches the command line,
the run's ``config.json`` and the supernet's cells, with no change to any fastnas file; the one check of
which supernet runs which executor; ``config.json`` of earlier versions (flat supernet keys) still loads."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_search

from fastnas.algorithms.options import option
from fastnas.cli import main
from fastnas.errors import CheckpointError, ConfigError
from fastnas.nn import ReferenceExecutor, SupernetOptions, executor_names, register_supernet_options
from fastnas.nn import executor as executor_module
from fastnas.train import run_search
from fastnas.train.checkpoint import check_run_binding
from fastnas.train.search_config import ResolvedSearchConfig, SearchConfig

SMALL: dict[str, Any] = {"nodes": 2, "ops": ("skip_connect", "avg_pool_3x3", "sep_conv_3x3"), "epochs": 1}


class CountingExecutor:
    """The reference loop, counting its calls (a throwaway executor)."""

    name = "counting"
    calls = 0

    def __init__(self, options: SupernetOptions | None) -> None:
        self._reference = ReferenceExecutor()

    def __call__(
        self, cell: Any, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, active: Any = None
    ):
        type(self).calls += 1
        return self._reference(cell, s0, s1, weights, active)


@dataclasses.dataclass(frozen=True)
class ScaledOptions(SupernetOptions):
    """A throwaway supernet option: every intermediate node scaled by ``node_scale``."""

    node_scale: float = option(1.0, "scale of every intermediate node (a test option)", gt=0.0)


class ScaledExecutor:
    """Reads the throwaway option from the supernet's options."""

    name = "scaled"

    def __init__(self, options: SupernetOptions | None) -> None:
        self.scale = getattr(options, "node_scale", 1.0)
        self._reference = ReferenceExecutor()

    def __call__(
        self, cell: Any, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, active: Any = None
    ):
        states = [s0, s1]
        offset = 0
        for _ in range(cell.num_nodes):
            node = sum(
                cell.edges[offset + i](state, weights[offset + i], None) for i, state in enumerate(states)
            )
            offset += len(states)
            states.append(node * self.scale)
        return states


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The two executors and the options class, registered the public way and removed afterwards."""
    monkeypatch.setattr(executor_module, "_EXECUTORS", dict(executor_module._EXECUTORS))
    executor_module.register_executor("counting", CountingExecutor)
    executor_module.register_executor("scaled", ScaledExecutor)
    previous = register_supernet_options(ScaledOptions)
    try:
        yield
    finally:
        register_supernet_options(previous)


def _losses(tmp_path: Path, name: str, **supernet: Any) -> list[float]:
    config = tiny_search(tmp_path, "darts", run_name=name, supernet_options=supernet, **SMALL)
    result = run_search(config, progress=False)
    return [m["train_loss"] for m in result.metrics]


def test_a_registered_executor_runs_a_search_and_is_recorded(tmp_path: Path, registered: None) -> None:
    assert "counting" in executor_names()
    CountingExecutor.calls = 0
    got = _losses(tmp_path, "counting", executor="counting")
    assert CountingExecutor.calls > 0
    want = _losses(tmp_path, "reference", executor="reference")
    assert got == pytest.approx(want, rel=1e-6)
    recorded = json.loads((tmp_path / "counting" / "config.json").read_text())["supernet_options"]
    assert recorded["executor"] == "counting"
    # the supernets that run only their own loop refuse it, with the one message
    with pytest.raises(ConfigError, match="--executor counting does not apply to the NAS-Bench-201 supernet"):
        SearchConfig(space="nb201", supernet_options={"executor": "counting"}).resolved()
    with pytest.raises(ConfigError, match="--executor counting does not apply to the EnTranNAS supernet"):
        SearchConfig(method="entrannas", supernet_options={"executor": "counting"}).resolved()


def test_a_registered_supernet_option_reaches_the_cli_config_and_cells(
    tmp_path: Path, registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    help_text = capsys.readouterr().out
    assert "--node-scale" in help_text and "counting" in help_text and "scaled" in help_text
    args = [
        "search",
        "--dataset",
        "digits",
        "--limit",
        "32",
        "--batch-size",
        "16",
        "--C",
        "4",
        "--layers",
        "3",
    ]
    args += ["--epochs", "1", "--nodes", "2", "--ops", ",".join(SMALL["ops"]), "--device", "cpu"]
    args += ["--no-progress", "--out-dir", str(tmp_path), "--executor", "scaled"]
    assert main([*args, "--node-scale", "0.5", "--run-name", "half"]) == 0
    config = ResolvedSearchConfig.load(tmp_path / "half" / "config.json")
    assert isinstance(config.supernet, ScaledOptions) and config.supernet.node_scale == 0.5
    assert main([*args, "--node-scale", "0", "--run-name", "zero"]) == 2
    assert "(--node-scale) must be > 0" in capsys.readouterr().err
    # the option changes what the cells compute; at 1.0 the scaled executor is the reference loop
    same = _losses(tmp_path, "one", executor="scaled", node_scale=1.0)
    half = _losses(tmp_path, "half-api", executor="scaled", node_scale=0.5)
    want = _losses(tmp_path, "reference", executor="reference")
    assert same == pytest.approx(want, rel=1e-6)
    assert half != pytest.approx(want, rel=1e-3)


def test_config_json_of_earlier_versions_with_flat_supernet_keys_loads() -> None:
    default = SearchConfig(method="pc-darts", dataset="digits").resolved().to_json()
    assert default["supernet_options"] == {"executor": "auto", "partial_k": 4, "partial_bypass": "max"}
    resolved = SearchConfig(
        method="pc-darts",
        dataset="digits",
        supernet_options={"partial_bypass": "avg", "executor": "reference"},
    ).resolved()
    data = resolved.to_json()
    assert data["supernet_options"] == {"executor": "reference", "partial_k": 4, "partial_bypass": "avg"}
    flat = {k: v for k, v in data.items() if k != "supernet_options"}
    flat.update(executor="reference", partial_k=4, partial_bypass="avg")
    assert ResolvedSearchConfig.from_json(flat) == resolved
    assert ResolvedSearchConfig.from_json(data) == resolved
    with pytest.raises(ConfigError, match="'partial_kk' is not an option of the supernet"):
        ResolvedSearchConfig.from_json({**data, "supernet_options": {"partial_kk": 2}})


def test_a_checkpoint_recording_flat_supernet_settings_binds_to_its_run(tmp_path: Path) -> None:
    """A checkpoint of an earlier version records the flat keys; the run's ``config.json`` read now gives
    ``supernet_options``: the same settings, so no difference; a changed value is named as an option.
    (Runs of that version recorded their executor, ``reference`` by default then.)"""
    resolved = SearchConfig(
        method="pc-darts", dataset="digits", supernet_options={"executor": "reference"}
    ).resolved()
    current = {**resolved.to_json(), "run_id": "r1"}
    flat = {k: v for k, v in current.items() if k != "supernet_options"}
    flat.update(executor="reference", partial_k=4, partial_bypass="max")
    notes: list[str] = []
    where = tmp_path / "config.json"
    check_run_binding(tmp_path / "ckpt.pt", flat, current, where, notes.append, recorded_run_id="r1")
    assert notes == []
    with pytest.raises(CheckpointError, match="supernet option 'partial_k' is 2 in config.json but 4"):
        changed = {**current, "supernet_options": {**current["supernet_options"], "partial_k": 2}}
        check_run_binding(tmp_path / "ckpt.pt", flat, changed, where, notes.append, recorded_run_id="r1")
