"""Run state a user edited or damaged, and losses that went NaN, are never silently used.

Each form is met through the command line, as a user meets it: exit status 2 and one line
``fastnas <command>: error: ...`` naming the setting, file, tensor or epoch at fault; and the run's
checkpoints and history files are left exactly as they were. The forms:

- a checkpoint of another run (another seed, another ``order``) put in place of the run's own;
- ``config.json`` edited after the run started (``epochs``, ``seed``, ``limit``, ``order``, ``lr``) or
  holding a key twice;
- ``genotype.json`` of a retraining run edited (``--resume`` and ``--eval-only``);
- a checkpoint whose content is valid but nonsensical (a NaN BatchNorm running variance, a NaN weight, a
  schedule past the run), written back with a valid checksum trailer;
- a validation loss that becomes NaN (DARTS, EnTranNAS), a state that is no longer finite after an epoch
  (inf BatchNorm running statistics, a NaN momentum buffer) and a NaN test loss.

Small runs (digits, 32 images, C=4, 3 cells) killed after their first epoch are made once per module
(:func:`templates`) and copied for each test.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import interrupt_search_at, tiny_search

from fastnas import TrainConfig, run_train
from fastnas.cli import main
from fastnas.errors import CheckpointError, ConfigError
from fastnas.train.checkpoint import (
    check_run_binding,
    find_non_finite,
    load_checkpoint,
    read_run_config,
)
from fastnas.train.retrain import TrainRunner
from fastnas.train.search import SearchRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster

SEARCH_ARGS = ["--dataset", "digits", "--limit", "32", "--batch-size", "16", "--C", "4", "--layers", "3"]
SEARCH_ARGS += ["--epochs", "2", "--seed", "0", "--device", "cpu", "--no-progress"]
HISTORIES = ("metrics.jsonl", "alphas.jsonl")
KEPT = ("checkpoint.pt", "checkpoint.prev.pt", *HISTORIES, "result.json", "eval.json", "genotype.json")


def tiny_train(out_dir: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "genotype": "DARTS_V2",
        "dataset": "digits",
        "limit": 32,
        "test_limit": 32,
        "batch_size": 16,
        "C": 4,
        "layers": 3,
        "epochs": 2,
        "seed": 0,
        "device": "cpu",
        "out_dir": str(out_dir),
        "run_name": "run",
    }
    values.update(overrides)
    return TrainConfig(**values)


def interrupt_train_at(epoch: int, config: TrainConfig) -> None:
    """Retrain ``config`` until epoch ``epoch`` (0-based) starts, then stop it as Ctrl-C would."""
    train_epoch = TrainRunner.train_epoch

    def interrupted(self: TrainRunner, current: int) -> Any:
        if current == epoch:
            raise KeyboardInterrupt
        return train_epoch(self, current)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainRunner, "train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_train(config, progress=False)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs of two epochs killed after their first (a checkpoint and history rows of epoch 1); never
    modified: tests work on copies."""
    base = tmp_path_factory.mktemp("templates")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    searches = {"search": {}, "search-seed1": {"seed": 1}, "search-order2": {"method_options": {"order": 2}}}
    with pytest.MonkeyPatch.context() as patch:
        for name, overrides in searches.items():
            interrupt_search_at(patch, 1, tiny_search(base / name, "darts", **overrides))
    for name, overrides in {"train": {}, "train-seed1": {"seed": 1}}.items():
        interrupt_train_at(1, tiny_train(base / name, **overrides))
    torch.set_num_threads(threads)
    return {name: base / name / "run" for name in (*searches, "train", "train-seed1")}


def copy_of(templates: dict[str, Path], name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(templates[name], run)
    return run


def kept(run: Path) -> dict[str, str | None]:
    """SHA-256 of each checkpoint, history and result file of ``run`` (None: absent)."""
    return {
        name: hashlib.sha256((run / name).read_bytes()).hexdigest() if (run / name).exists() else None
        for name in KEPT
    }


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """``fastnas ARGV`` must exit 2 with one ``fastnas CMD: error:`` line holding every one of ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastnas {argv[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def resume(kind: str, run: Path) -> list[str]:
    return [kind, "--resume", str(run), "--no-progress"]


def eval_only(run: Path) -> list[str]:
    return ["train", "--eval-only", str(run / "checkpoint.pt"), "--no-progress"]


def write_back(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` as fastnas writes checkpoints: ``torch.save`` bytes, then the trailer line with
    their SHA-256 and size (so the file passes verification; no previous checkpoint is made)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    path.write_bytes(payload + f"\nFASTNAS-CHECKPOINT v1 sha256={digest} size={len(payload)}\n".encode())


# ------------------------------------------------------------------------ a checkpoint of another run
SWAPS = {
    # name: (run, the run whose checkpoint is put in its place, command, words of the message)
    "search, another seed": ("search", "search-seed1", "resume", ["'seed' 1 (this run: 0)"]),
    "search, another order": ("search", "search-order2", "resume", ["method option 'order' 2 (this run: 1)"]),
    "train, another seed": ("train", "train-seed1", "resume", ["'seed' 1 (this run: 0)"]),
    "train --eval-only, another seed": ("train", "train-seed1", "eval", ["'seed' 1 (this run: 0)"]),
}


@pytest.mark.parametrize("form", list(SWAPS))
def test_a_checkpoint_of_another_run_is_refused(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    name, other, command, words = SWAPS[form]
    run = copy_of(templates, name, tmp_path)
    shutil.copy(templates[other] / "checkpoint.pt", run / "checkpoint.pt")
    before = kept(run)
    kind = name.split("-")[0]
    argv = resume(kind, run) if command == "resume" else eval_only(run)
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    refused(capsys, argv, str(run / "checkpoint.pt"), "belongs to another run", run_id, *words)
    assert kept(run) == before


# ------------------------------------------------------------------------------ config.json edited
EDITS = {
    # name: (run, setting, new value, words)
    "search epochs": ("search", "epochs", 3, "'epochs' is 3 in config.json but 2 in the checkpoint"),
    "search seed": ("search", "seed", 7, "'seed' is 7 in config.json but 0 in the checkpoint"),
    "search limit": ("search", "limit", 24, "'limit' is 24 in config.json but 32 in the checkpoint"),
    "search order": (
        "search",
        "order",
        2,
        "method option 'order' is 2 in config.json but 1 in the checkpoint",
    ),
    "train epochs": ("train", "epochs", 3, "'epochs' is 3 in config.json but 2 in the checkpoint"),
    "train seed": ("train", "seed", 7, "'seed' is 7 in config.json but 0 in the checkpoint"),
    "train limit": ("train", "limit", 48, "'limit' is 48 in config.json but 32 in the checkpoint"),
    "train lr": ("train", "lr", 0.5, "'lr' is 0.5 in config.json but 0.025 in the checkpoint"),
}


@pytest.mark.parametrize("form", list(EDITS))
def test_an_edited_config_json_is_refused_naming_the_setting(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    name, key, value, words = EDITS[form]
    run = copy_of(templates, name, tmp_path)
    config = json.loads((run / "config.json").read_text())
    if key == "order":
        config["method_options"][key] = value
    else:
        config[key] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))
    before = kept(run)
    refused(capsys, resume(name, run), str(run / "config.json"), words, "was changed after")
    assert kept(run) == before


def test_an_edited_config_json_is_refused_by_eval_only_too(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(templates, "train", tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": 0.5}))
    refused(capsys, eval_only(run), "'lr' is 0.5 in config.json but 0.025 in the checkpoint")
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("kind", ["search", "train"])
def test_a_key_given_twice_in_config_json_is_refused(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_of(templates, kind, tmp_path)
    text = (run / "config.json").read_text()
    assert '"epochs": 2' in text
    (run / "config.json").write_text(text.replace("{", '{\n  "epochs": 3,', 1))  # the last one wins in JSON
    before = kept(run)
    refused(capsys, resume(kind, run), str(run / "config.json"), "gives the key 'epochs' twice", "3 and 2")
    assert kept(run) == before


def test_settings_that_only_say_where_things_are_may_change_with_a_note(tmp_path: Path) -> None:
    notes: list[str] = []
    recorded = {"run_id": "a" * 32, "seed": 0, "data_dir": "/old/data", "method_options": {"order": 1}}
    current = {**recorded, "data_dir": "/new/data"}
    path, config = tmp_path / "checkpoint.pt", tmp_path / "config.json"
    check_run_binding(path, recorded, current, config, notes.append, recorded_run_id="a" * 32)
    assert len(notes) == 1 and '\'data_dir\' from "/old/data" to "/new/data"' in notes[0]
    with pytest.raises(CheckpointError, match="method option 'order' is 2 in config.json but 1"):
        check_run_binding(
            path, recorded, {**current, "method_options": {"order": 2}}, config, notes.append,
            recorded_run_id="a" * 32,
        )  # fmt: skip


def test_read_run_config_refuses_only_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"a": {"b": 1, "c": 2}, "d": [1, {"e": 1}]}')
    assert read_run_config(path, "none") == {"a": {"b": 1, "c": 2}, "d": [1, {"e": 1}]}
    path.write_text('{"a": {"b": 1, "b": 2}}')
    with pytest.raises(ConfigError, match=r"gives the key 'b' twice in one object \(1 and 2\)"):
        read_run_config(path, "none")


# ---------------------------------------------------------------------------- genotype.json edited
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_an_edited_genotype_json_is_refused(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run = copy_of(templates, "train", tmp_path)
    path = run / "genotype.json"
    text = path.read_text()
    assert "max_pool_3x3" in text
    path.write_text(text.replace("max_pool_3x3", "avg_pool_3x3"))  # sed -i s/max_pool_3x3/avg_pool_3x3/g
    before = kept(run)
    argv = resume("train", run) if command == "resume" else eval_only(run)
    words = ("is not the architecture that checkpoint.pt was trained with", "reduce cell, node 2, edge 1")
    refused(capsys, argv, str(path), *words, "max_pool_3x3 from node 0 in the checkpoint", "more difference")
    assert kept(run) == before


# --------------------------------------------------------------------- valid but nonsensical content
def first_key(state: dict[str, Any], suffix: str) -> str:
    return next(k for k, v in state["model"].items() if k.endswith(suffix) and v.is_floating_point())


def nan_at(suffix: str) -> Callable[[dict[str, Any]], str]:
    def inject(state: dict[str, Any]) -> str:
        key = first_key(state, suffix)
        state["model"][key].view(-1)[0] = float("nan")
        return f"model['{key}'] holds 1 NaN of its"

    return inject


def schedule_past_the_run(state: dict[str, Any]) -> str:
    state["scheduler"]["last_epoch"] = 50
    return "scheduler.last_epoch is 50, but after epoch 1 its learning-rate schedule has taken 1 step(s)"


INJECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "NaN BN running_var": nan_at("running_var"),
    "NaN weight": nan_at(".weight"),
    "scheduler.last_epoch past the run": schedule_past_the_run,
}


@pytest.mark.parametrize("command", ["search", "train", "train --eval-only"])
@pytest.mark.parametrize("form", list(INJECTIONS))
def test_a_checkpoint_with_a_nonsensical_state_is_refused_naming_it(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str, command: str
) -> None:
    kind = command.split()[0]
    run = copy_of(templates, kind, tmp_path)
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    words = INJECTIONS[form](state)
    write_back(path, state)
    load_checkpoint(path, fallback=False)  # it verifies: only its content is wrong
    before = kept(run)
    refused(capsys, resume(kind, run) if command == kind else eval_only(run), str(path), words)
    assert kept(run) == before


# ------------------------------------------------------------------------------------ NaN and inf
def batch_norms(model: torch.nn.Module) -> Iterator[torch.nn.BatchNorm2d]:
    return (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.running_var is not None)


@pytest.mark.parametrize("method", ["darts", "entrannas"])
def test_a_nan_validation_loss_stops_the_search_naming_the_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The training losses stay finite (training batches use their own statistics) while the running
    statistics the validation pass uses hold a NaN: before, the run ended with exit 0 and NaN val losses."""
    train_epoch = SearchRunner.train_epoch

    def diverging(self: SearchRunner, epoch: int) -> dict[str, float]:
        row = train_epoch(self, epoch)
        if epoch == 1:
            next(batch_norms(self.model.supernet)).running_mean.fill_(float("nan"))
        return row

    monkeypatch.setattr(SearchRunner, "train_epoch", diverging)
    argv = ["search", "--method", method, *SEARCH_ARGS, "--out-dir", str(tmp_path), "--run-name", "run"]
    refused(
        capsys, argv, "the validation loss became NaN at epoch 2, step 1", "keeps its last good checkpoint"
    )
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoint.pt", fallback=False).state["epoch"] == 1
    for name in HISTORIES:
        assert [json.loads(line)["epoch"] for line in (run / name).read_text().splitlines()] == [1], name
    assert not (run / "genotype.json").exists()


def inf_running_var(model: torch.nn.Module, runner: Any) -> None:
    next(batch_norms(model)).running_var.fill_(float("inf"))


def nan_running_mean(model: torch.nn.Module, runner: Any) -> None:
    next(batch_norms(model)).running_mean.fill_(float("nan"))


def nan_momentum(model: torch.nn.Module, runner: Any) -> None:
    optimizer = runner.weight_optimizer if isinstance(runner, SearchRunner) else runner.optimizer
    next(iter(optimizer.state.values()))["momentum_buffer"].view(-1)[0] = float("nan")


DIVERGENCES = {
    # name: (run, damage after the training of epoch 2, words)
    "train, inf BN running_var": (
        "train",
        inf_running_var,
        ["after epoch 2", "model['stem.1.running_var'] holds 12 infinite of its 12 values"],
    ),
    "train, NaN test loss": ("train", nan_running_mean, ["the test loss became NaN at epoch 2, step 1"]),
    "search, NaN momentum buffer": (
        "search",
        nan_momentum,
        ["after epoch 2", "weight_optimizer['state'][", "['momentum_buffer'] holds 1 NaN"],
    ),
}


@pytest.mark.parametrize("form", list(DIVERGENCES))
def test_a_state_that_is_not_finite_is_never_checkpointed(
    templates: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    form: str,
) -> None:
    kind, damage, words = DIVERGENCES[form]
    runner_class: Any = SearchRunner if kind == "search" else TrainRunner
    train_epoch = runner_class.train_epoch

    def diverging(self: Any, epoch: int) -> dict[str, float]:
        row = train_epoch(self, epoch)
        damage(self.model.supernet if kind == "search" else self.model, self)
        return row

    monkeypatch.setattr(runner_class, "train_epoch", diverging)
    run = copy_of(templates, kind, tmp_path)
    before = kept(run)
    line = refused(capsys, resume(kind, run), *words)
    assert "epoch 2" in line
    assert kept(run) == before  # the epoch-1 checkpoint stays, no epoch-2 row, no result


def test_find_non_finite_names_the_first_bad_tensor_and_counts_the_others() -> None:
    state = {
        "epoch": 1,
        "model": {"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf"), float("nan")])},
        "optimizer": {"state": {0: {"step": torch.tensor(float("nan"))}}, "lr": float("inf")},
        "rng": torch.zeros(4, dtype=torch.uint8),
    }
    bad = find_non_finite(state)
    assert bad is not None and bad.name == "model['b']" and (bad.nan, bad.inf, bad.size) == (1, 1, 3)
    more = "(and 2 more tensor(s) or number(s) are not finite)"  # optimizer step, lr
    assert str(bad) == f"model['b'] holds 1 NaN and 1 infinite of its 3 values {more}"
    assert find_non_finite({"model": {"a": torch.zeros(2)}, "lr": 0.1}) is None


# ---------------------------------------------------------------------- checkpoints of earlier versions
@pytest.mark.parametrize("config_has_id", [False, True], ids=["earlier run", "this version's run"])
def test_a_checkpoint_without_a_run_id_or_settings(
    templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], config_has_id: bool
) -> None:
    """Earlier versions wrote neither: their runs resume with a note; a run that has an id accepts only
    checkpoints carrying it."""
    run = copy_of(templates, "search", tmp_path)
    path = run / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]
    write_back(path, state)
    if not config_has_id:
        config = json.loads((run / "config.json").read_text())
        del config["run_id"]
        (run / "config.json").write_text(json.dumps(config))
        assert main(resume("search", run)) == 0
        assert "recorded neither a run id nor the run's settings" in (run / "log.txt").read_text()
        assert load_checkpoint(path).state["config"]["run_id"] == ""  # the resumed run records its settings
        return
    before = kept(run)
    refused(capsys, resume("search", run), str(path), "records neither a run id nor the run's settings")
    assert kept(run) == before
