"""One epoch numbering everywhere: the log's ``epoch 1/E`` and ``"epoch": 1`` in every run file are the
same, first epoch (search, retraining, DDSAS's sampling records, the checkpoint); a kill and ``--resume``
give the history of an uninterrupted run; run directories of earlier versions (files numbered from 0,
``config.json`` without ``epoch_base``) still resume, plot and evaluate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import interrupt_search_at, tiny_search

from fastnas import run_search
from fastnas.errors import ConfigError
from fastnas.fileio import read_jsonl, rewrite_jsonl
from fastnas.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    previous_checkpoint_path,
    save_checkpoint,
)
from fastnas.train.retrain import evaluate_checkpoint, resume_train, run_train
from fastnas.train.retrain_config import TrainConfig
from fastnas.train.run_state import EPOCH_BASE, read_history, run_epoch_base
from fastnas.train.search import resume_search

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOG_EPOCH = re.compile(r"^(?:stage \d+/\d+ )?epoch (\d+)/(\d+) \|", re.M)
TIMES = ("epoch_time_s", "images_per_s", "data_wait_s", "peak_memory_mb", "train_time_s")


def logged_epochs(run: Path) -> list[int]:
    """The epoch numbers of the per-epoch lines of ``log.txt``, in order."""
    return [int(m.group(1)) for m in LOG_EPOCH.finditer((run / "log.txt").read_text())]


def without_times(rows: list[Any]) -> list[Any]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def tiny_train(tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "genotype": "DARTS_V2",
        "dataset": "digits",
        "limit": 32,
        "test_limit": 32,
        "batch_size": 16,
        "C": 4,
        "layers": 3,
        "epochs": 2,
        "seed": 5,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "run_name": "run",
    }
    values.update(overrides)
    return TrainConfig(**values)


def as_earlier_version(run: Path, histories: tuple[str, ...]) -> None:
    """Rewrite ``run`` as fastnas wrote it before files numbered epochs from 1: no ``epoch_base`` in
    ``config.json`` (nor in a retraining checkpoint's config), every ``epoch`` one lower."""
    config = json.loads((run / "config.json").read_text())
    assert config.pop("epoch_base") == EPOCH_BASE == 1
    (run / "config.json").write_text(json.dumps(config))
    for name in histories:
        rows = read_jsonl(run / name)
        rewrite_jsonl(run / name, [{**r, "epoch": r["epoch"] - 1} for r in rows])
    previous_checkpoint_path(run / CHECKPOINT_NAME).unlink(missing_ok=True)
    state = load_checkpoint(run / CHECKPOINT_NAME).state
    state["epoch"] -= 1
    if "config" in state:
        state["config"].pop("epoch_base")
    (run / CHECKPOINT_NAME).unlink()
    save_checkpoint(run / CHECKPOINT_NAME, state)


# ---------------------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 3-epoch DARTS search."""
    root = tmp_path_factory.mktemp("reference")
    return run_search(tiny_search(root, "darts", epochs=3), progress=False).run_dir


def test_the_log_line_and_the_history_rows_of_an_epoch_carry_the_same_number(finished_search: Path) -> None:
    assert logged_epochs(finished_search) == [1, 2, 3]  # "epoch 1/3 | ..."
    for name in ("metrics.jsonl", "alphas.jsonl"):
        assert [r["epoch"] for r in read_jsonl(finished_search / name)] == [1, 2, 3], name
    log = (finished_search / "log.txt").read_text()
    metrics = read_jsonl(finished_search / "metrics.jsonl")
    for row in metrics:  # the line "epoch N/3" shows the train loss of the row "epoch": N
        assert f"epoch {row['epoch']}/3 | train loss {row['train_loss']:.4f} " in log
    assert json.loads((finished_search / "config.json").read_text())["epoch_base"] == 1
    assert load_checkpoint(finished_search / CHECKPOINT_NAME).state["epoch"] == 3  # the last epoch


def test_a_killed_and_resumed_search_has_the_history_of_an_uninterrupted_one(
    finished_search: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt_search_at(monkeypatch, 2, tiny_search(tmp_path, "darts", epochs=3))  # killed in epoch 3
    run = tmp_path / "run"
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert load_checkpoint(run / CHECKPOINT_NAME).state["epoch"] == 2
    resume_search(run, progress=False)
    assert "after epoch 2/3" in (run / "log.txt").read_text()
    assert logged_epochs(run) == [1, 2, 3]
    assert without_times(read_jsonl(run / "metrics.jsonl")) == without_times(
        read_jsonl(finished_search / "metrics.jsonl")
    )
    assert read_jsonl(run / "alphas.jsonl") == read_jsonl(finished_search / "alphas.jsonl")
    assert (run / "genotype.txt").read_text() == (finished_search / "genotype.txt").read_text()


def test_a_search_of_an_earlier_version_resumes_in_its_own_numbering(
    finished_search: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt_search_at(monkeypatch, 2, tiny_search(tmp_path, "darts", epochs=3))
    run = tmp_path / "run"
    as_earlier_version(run, ("metrics.jsonl", "alphas.jsonl"))
    assert run_epoch_base(run) == 0
    resume_search(run, progress=False)
    assert "after epoch 2/3" in (run / "log.txt").read_text()
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # one numbering within the run directory
    reference = read_jsonl(finished_search / "metrics.jsonl")
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in reference]  # resumed exactly
    assert (run / "genotype.txt").read_text() == (finished_search / "genotype.txt").read_text()
    # readers see the same 1-based epochs in runs of either version
    assert [r["epoch"] for r in read_history(run / "metrics.jsonl", run_epoch_base(run))] == [1, 2, 3]
    assert [r["epoch"] for r in read_history(run / "alphas.jsonl", 0)] == [1, 2, 3]


def test_plots_of_an_earlier_version_use_the_same_epochs(finished_search: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fastnas.train import plots

    run = tmp_path / "old"
    shutil.copytree(finished_search, run)
    as_earlier_version(run, ("metrics.jsonl", "alphas.jsonl"))
    assert [r["epoch"] for r in plots._rows(run, "metrics.jsonl")] == [1, 2, 3]
    written = plots.plot_run(run, epochs=[1, 3])
    assert {"alphas_epoch1", "alphas_epoch3", "curves"} <= set(written)


def test_an_unknown_epoch_base_is_refused_with_a_clear_message(finished_search: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_search, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epoch_base": 2}))
    with pytest.raises(ConfigError, match="'epoch_base' must be 1 .* or 0 .*got 2"):
        resume_search(run, progress=False)
    with pytest.raises(ConfigError, match="'epoch_base' must be"):
        run_epoch_base(run)


def test_ddsas_sampling_records_number_epochs_like_the_metrics(tmp_path: Path) -> None:
    options = {"subspace_ops": 20, "resample_every": 1}
    run = run_search(
        tiny_search(tmp_path, "ddsas", batch_size=8, epochs=2, method_options=options), progress=False
    ).run_dir
    rows = read_jsonl(run / "sampling.jsonl")
    assert {r["epoch"] for r in rows} == {r["epoch"] for r in read_jsonl(run / "metrics.jsonl")} == {1, 2}
    assert all(r["stage_epoch"] == r["epoch"] for r in rows)  # one stage: the same number
    assert [(r["epoch"], r["step"]) for r in rows][:2] == [(1, 0), (1, 1)]


def test_pdarts_stage_records_and_metrics_share_the_numbering(tmp_path: Path) -> None:
    options = {"stage_epochs": (1, 2), "stage_layers": (3, 4), "keep_ops": (4, 1), "warmup_epochs": 0}
    config = tiny_search(
        tmp_path, "pdarts", method_options={**options, "skip_dropout": (0.1, 0.4)}, layers=None, epochs=None
    )
    run = run_search(config, progress=False).run_dir
    rows = read_jsonl(run / "metrics.jsonl")
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in rows] == [(1, 1, 1), (2, 2, 1), (3, 2, 2)]
    stages = json.loads((run / "stages.json").read_text())
    assert [s["epochs"] for s in stages] == [[1, 1], [2, 3]]
    assert logged_epochs(run) == [1, 2, 3]


# ------------------------------------------------------------------------------------------ retraining
def test_retraining_logs_writes_and_checkpoints_the_same_epoch_numbers(tmp_path: Path) -> None:
    result = run_train(tiny_train(tmp_path), progress=False)
    run = result.run_dir
    assert logged_epochs(run) == [1, 2]
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert load_checkpoint(run / CHECKPOINT_NAME).state["epoch"] == 2
    assert evaluate_checkpoint(run, progress=False, write=False)["epoch"] == 2


def test_a_retraining_of_an_earlier_version_resumes_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastnas.train.retrain import TrainRunner

    reference = run_train(tiny_train(tmp_path / "a", epochs=3), progress=False)
    original = TrainRunner.train_epoch

    def killed_in_epoch_three(self: TrainRunner, epoch: int) -> Any:
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(TrainRunner, "train_epoch", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_train(tmp_path / "b", epochs=3), progress=False)
    monkeypatch.undo()
    run = tmp_path / "b" / "run"
    as_earlier_version(run, ("metrics.jsonl",))
    assert evaluate_checkpoint(run, progress=False, write=False)["epoch"] == 2  # after its second epoch
    resumed = resume_train(run, progress=False)
    assert [r["epoch"] for r in resumed.metrics] == [0, 1, 2]
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in reference.metrics]
    assert resumed.result["test_top1"] == reference.result["test_top1"]
    assert evaluate_checkpoint(run, progress=False, write=False)["epoch"] == 3
