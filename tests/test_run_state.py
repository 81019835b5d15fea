"""The resume protocol and run-directory safety, met through the command line as a user meets them.

Every refusal is checked the same way (:func:`refused`): exit status 2, one line on stderr of the form
``fastnas <command>: error: ...`` naming the file at fault, no traceback, and (:func:`snapshot`) no file
in the run directory rewritten, truncated, added or removed. One finished two-epoch search and one
finished two-epoch retraining (module fixtures) are copied for each damage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fastnas.train.retrain as retrain_module
from fastnas.cli import main
from fastnas.search_model import SearchModel
from fastnas.train.checkpoint import save_checkpoint, verify_checkpoint

SEARCH_ARGS = ["--dataset", "digits", "--epochs", "2", "--C", "4", "--layers", "3", "--limit", "64"]
SEARCH_ARGS += ["--batch-size", "16", "--no-progress", "--device", "cpu"]  # 2 steps per epoch
TRAIN_ARGS = ["--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "2", "--C", "4", "--layers", "3"]
TRAIN_ARGS += ["--limit", "64", "--batch-size", "16", "--no-progress", "--device", "cpu"]  # 4 steps per epoch
KINDS = ("search", "train")
HISTORIES = {"search": ("metrics.jsonl", "alphas.jsonl"), "train": ("metrics.jsonl",)}


def fresh_args(kind: str, out_dir: Path, run_name: str = "run") -> list[str]:
    return [
        kind,
        *(SEARCH_ARGS if kind == "search" else TRAIN_ARGS),
        "--out-dir",
        str(out_dir),
        "--run-name",
        run_name,
    ]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished two-epoch run of each command (never modified: tests work on copies)."""
    base = tmp_path_factory.mktemp("finished")
    for kind in KINDS:
        assert main(fresh_args(kind, base, kind)) == 0
    return {kind: base / kind for kind in KINDS}


def copy_run(finished: dict[str, Path], kind: str, dest: Path, prev: bool = True) -> Path:
    run = dest / kind
    shutil.copytree(finished[kind], run)
    if not prev:
        (run / "checkpoint.prev.pt").unlink()
    return run


def roll_back(run: Path, kind: str) -> None:
    """Make ``run`` look killed during epoch 2: only the epoch-1 checkpoint is left (the kill came between
    the two renames of the epoch-2 checkpoint); the history files still hold the epoch-2 rows."""
    os.replace(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    written_at_the_end = ("genotype.json", "genotype.txt", "consistency.json") if kind == "search" else ()
    for name in (*written_at_the_end, "result.json"):
        (run / name).unlink(missing_ok=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Name -> (size, mtime, SHA-256) of every file in ``folder``."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run the command line; it must exit 2 with one ``fastnas CMD: error:`` line holding ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"fastnas {argv[0]}: error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def resume(kind: str, run: Path, *extra: str) -> list[str]:
    return [kind, "--resume", str(run), "--no-progress", *extra]


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def with_trailer(payload: bytes) -> bytes:
    """A valid fastnas checkpoint file around ``payload`` (the documented trailer)."""
    digest = hashlib.sha256(payload).hexdigest()
    return payload + f"\nFASTNAS-CHECKPOINT v1 sha256={digest} size={len(payload)}\n".encode()


def resaved(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Load the checkpoint, ``change`` its state, save it again (valid checksum; the old one becomes the
    previous checkpoint)."""

    def corrupt(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        save_checkpoint(path, state)

    return corrupt


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (damage, words of the message)
    "empty": (lambda p: p.write_bytes(b""), "it is empty"),
    "zero-filled": (lambda p: p.write_bytes(bytes(p.stat().st_size)), "only zero bytes"),
    "random bytes": (
        lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
        "no fastnas checkpoint trailer",
    ),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    "missing key": (resaved(lambda s: s.pop("scheduler")), "has no 'scheduler' entry"),
    "tensor": (lambda p: p.write_bytes(with_trailer(torch_bytes(torch.zeros(3)))), "holds a Tensor"),
    "byte flipped": (flip_middle_byte, "checksum does not match"),
}


# ------------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.parametrize("form", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_without_a_previous_one_is_refused(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, form: str
) -> None:
    run = copy_run(finished, kind, tmp_path, prev=False)
    damage, words = CORRUPTIONS[form]
    damage(run / "checkpoint.pt")
    before = snapshot(run)
    line = refused(capsys, resume(kind, run), str(run / "checkpoint.pt"), words, "start the run again")
    assert "checkpoint.prev.pt" not in line or "no previous checkpoint" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("form", list(CORRUPTIONS))
def test_eval_only_refuses_a_damaged_checkpoint(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    run = copy_run(finished, "train", tmp_path)  # a previous checkpoint is never used by --eval-only
    damage, words = CORRUPTIONS[form]
    damage(run / "checkpoint.pt")
    before = snapshot(run)
    refused(capsys, ["train", "--eval-only", str(run / "checkpoint.pt"), "--no-progress"], str(run), words)
    assert snapshot(run) == before  # no eval.json


@pytest.mark.parametrize("kind", KINDS)
def test_a_byte_flip_falls_back_to_the_previous_checkpoint_and_gives_the_same_result(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    flip_middle_byte(run / "checkpoint.pt")
    capsys.readouterr()
    assert main(resume(kind, run)) == 0
    out = capsys.readouterr().out
    log = (run / "log.txt").read_text()
    for text in (out, log):
        assert f"checkpoint {run / 'checkpoint.pt'} is damaged: its SHA-256 checksum does not match" in text
        assert f"the run continues from the previous checkpoint {run / 'checkpoint.prev.pt'}" in text
    verify_checkpoint(run / "checkpoint.pt")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2  # the last epoch, from 1
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2]
    # epoch 2 redone from the epoch-1 checkpoint ends exactly as the uninterrupted run did
    reference = finished[kind]
    assert [r["train_loss"] for r in rows(run / "metrics.jsonl")] == [
        r["train_loss"] for r in rows(reference / "metrics.jsonl")
    ]
    if kind == "search":
        assert (run / "genotype.txt").read_text() == (reference / "genotype.txt").read_text()
        assert [r["epoch"] for r in rows(run / "alphas.jsonl")] == [1, 2]
    else:
        result, expected = (json.loads((r / "result.json").read_text()) for r in (run, reference))
        assert result["test_top1"] == expected["test_top1"] and result["test_loss"] == expected["test_loss"]


@pytest.mark.parametrize("epoch", [0, 3, 7])
@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_epoch_outside_the_run_is_refused_before_the_histories_are_trimmed(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, epoch: int
) -> None:
    run = copy_run(finished, kind, tmp_path)
    resaved(lambda s: s.update(epoch=epoch))(run / "checkpoint.pt")
    before = snapshot(run)
    refused(capsys, resume(kind, run), str(run / "checkpoint.pt"), f"records epoch {epoch}", "outside 1 to 2")
    assert snapshot(run) == before
    for name in HISTORIES[kind]:
        assert len(rows(run / name)) == 2  # not trimmed to zero rows


# ------------------------------------------------------------------------------------- unsafe pickle
class TouchesMarker:
    """Unpickling this creates ``marker``: code runs at load time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["extra"] = TouchesMarker(marker)
    path.write_bytes(with_trailer(torch_bytes(state)))  # checksum valid: made on purpose


@pytest.mark.parametrize("prev", [True, False], ids=["with-prev", "without-prev"])
@pytest.mark.parametrize("how", ["search --resume", "train --resume", "train --eval-only"])
def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(
    finished: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
    prev: bool,
) -> None:
    kind, option = how.split()
    run = copy_run(finished, kind, tmp_path, prev=prev)
    marker = tmp_path / "MARKER"
    plant_pickle(run / "checkpoint.pt", marker)
    before = snapshot(run)
    target = run / "checkpoint.pt" if option == "--eval-only" else run
    refused(capsys, [kind, option, str(target), "--no-progress"], str(run / "checkpoint.pt"), "malicious")
    assert not marker.exists()
    assert snapshot(run) == before

    # the payload is really dangerous: an unsafe load runs it
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------ config.json
def _edit_config(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config, indent=2))

    return edit


def _config_in_a_list(path: Path) -> None:
    path.write_text(json.dumps([json.loads(path.read_text())]))


CONFIG_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "a JSON list": (_config_in_a_list, "must be a JSON object"),
    "a list of numbers": (lambda p: p.write_text("[1, 2]\n"), "must be a JSON object"),
    "a string for a number": (_edit_config(lambda c: c.update(epochs="ten")), "'epochs' must be int"),
    "an unknown key": (_edit_config(lambda c: c.update(colour="red")), "unknown key(s) ['colour']"),
    "a missing key": (_edit_config(lambda c: c.pop("epochs")), "lacks the key(s) ['epochs']"),
    "not JSON": (lambda p: p.write_text(p.read_text()[:40]), "is not valid JSON"),
    "not UTF-8": (lambda p: p.write_bytes(b"\xff\xfe{garbage"), "cannot read"),
}


@pytest.mark.parametrize("form", list(CONFIG_DAMAGE))
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_config_is_one_clear_line_naming_it(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, form: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    damage, words = CONFIG_DAMAGE[form]
    damage(run / "config.json")
    before = snapshot(run)
    refused(capsys, resume(kind, run), str(run / "config.json"), words)
    assert snapshot(run) == before


def test_resuming_the_other_kind_of_run_says_which_command_to_use(
    finished: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    search, train = finished["search"], finished["train"]
    before = snapshot(search), snapshot(train)
    refused(capsys, resume("train", search), str(search), "search run", f"fastnas search --resume {search}")
    refused(capsys, resume("search", train), str(train), "retraining run", f"fastnas train --resume {train}")
    refused(
        capsys,
        ["train", "--eval-only", str(search), "--no-progress"],
        str(search / "checkpoint.pt"),
        "search checkpoint",
    )
    assert (snapshot(search), snapshot(train)) == before


# ------------------------------------------------------------------------------ temporaries, histories
@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_temporary_is_removed_on_resume(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    stale = run / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"PK\x03\x04half a checkpoint")
    capsys.readouterr()
    assert main(resume(kind, run)) == 0  # finished: reloads (search) or evaluates (train)
    assert not stale.exists()
    assert "removed .checkpoint.pt.abc123.tmp" in capsys.readouterr().out
    assert "removed .checkpoint.pt.abc123.tmp" in (run / "log.txt").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_a_torn_last_history_line_past_the_checkpoint_is_dropped_with_a_warning(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    roll_back(run, kind)
    # killed while appending the epoch-2 row: half of it, no newline (and no epoch-2 alphas row yet)
    metrics = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(metrics[0] + metrics[1][: len(metrics[1]) // 2])
    if kind == "search":
        alphas = (run / "alphas.jsonl").read_text().splitlines(keepends=True)
        (run / "alphas.jsonl").write_text(alphas[0])
    capsys.readouterr()
    assert main(resume(kind, run)) == 0
    out = capsys.readouterr().out
    warning = f"{run / 'metrics.jsonl'}: dropping a torn last line"
    assert warning in out and warning in (run / "log.txt").read_text()
    reference = finished[kind]
    for name in HISTORIES[kind]:
        assert [r["epoch"] for r in rows(run / name)] == [1, 2]
    assert [r["train_loss"] for r in rows(run / "metrics.jsonl")] == [
        r["train_loss"] for r in rows(reference / "metrics.jsonl")
    ]


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind in KINDS for name in HISTORIES[kind]])
def test_a_damaged_history_line_in_the_middle_is_refused_naming_file_and_line(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, name: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    roll_back(run, kind)  # the other history file has an epoch-2 row to drop: it must not be rewritten either
    lines = (run / name).read_text().splitlines(keepends=True)
    (run / name).write_text('{"epoch": 1, "train_lo\n' + "".join(lines[1:]))
    before = snapshot(run)
    refused(capsys, resume(kind, run), f"{run / name}, line 1: not valid JSON", "repair or delete that line")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------------------- divergence
def nan_criterion(monkeypatch: pytest.MonkeyPatch, level: str, at_call: int) -> None:
    """``SearchModel.criterion`` returns NaN at the ``at_call``-th call of ``level`` in this process."""
    original = SearchModel.criterion
    calls = {"weights": 0, "arch": 0}

    def criterion(self: SearchModel, logits: torch.Tensor, target: torch.Tensor, lvl: str = "weights"):  # type: ignore[no-untyped-def]
        loss = original(self, logits, target, lvl)
        calls[lvl] += 1
        return loss * float("nan") if lvl == level and calls[lvl] == at_call else loss

    monkeypatch.setattr(SearchModel, "criterion", criterion)


def test_a_nan_weights_loss_stops_the_search_and_resume_continues_from_epoch_one(
    finished: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nan_criterion(monkeypatch, "weights", at_call=4)  # 2 steps per epoch: the second step of epoch 2
    refused(
        capsys, fresh_args("search", tmp_path), "the weights loss became NaN at epoch 2, step 2", "--resume"
    )
    run = tmp_path / "run"
    verify_checkpoint(run / "checkpoint.pt")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1  # no epoch-2 checkpoint
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1]
    assert not (run / "genotype.json").exists()  # nothing derived from non-finite weights

    monkeypatch.undo()
    assert main(resume("search", run)) == 0
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2]
    assert (run / "genotype.txt").read_text() == (finished["search"] / "genotype.txt").read_text()


def test_a_nan_architecture_loss_names_the_architecture_level(
    finished: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = copy_run(finished, "search", tmp_path)
    roll_back(run, "search")
    good = (run / "checkpoint.pt").read_bytes()
    nan_criterion(monkeypatch, "arch", at_call=2)  # the resumed process starts at epoch 2
    # the NaN architecture makes the weights loss of the same step NaN too: the level that went first counts
    refused(capsys, resume("search", run), "the architecture loss became NaN at epoch 2, step 2")
    assert (run / "checkpoint.pt").read_bytes() == good
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1]


def test_a_nan_training_loss_stops_retraining_without_a_result(
    finished: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = retrain_module.training_loss
    calls = [0]

    def training_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls[0] == 6 else loss  # 4 steps per epoch: epoch 2, step 2

    monkeypatch.setattr(retrain_module, "training_loss", training_loss)
    refused(
        capsys, fresh_args("train", tmp_path), "the training loss became NaN at epoch 2, step 2", "--resume"
    )
    run = tmp_path / "run"
    assert not (run / "result.json").exists()
    verify_checkpoint(run / "checkpoint.pt")
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1]

    monkeypatch.undo()
    assert main(resume("train", run)) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["test_top1"] == json.loads((finished["train"] / "result.json").read_text())["test_top1"]
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2]


# ------------------------------------------------------------------------------- existing run folders
@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_run_into_an_existing_run_is_refused(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    before = snapshot(run)
    refused(
        capsys, fresh_args(kind, tmp_path, kind), str(run), f"fastnas {kind} --resume {run}", "--overwrite"
    )
    assert snapshot(run) == before


def test_a_fresh_run_into_a_non_empty_folder_without_a_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    refused(capsys, fresh_args("train", tmp_path), str(run), "--run-name", "--overwrite")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_replaces_the_run(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    (run / "eval.json").write_text("{}\n")  # written by --eval-only: fastnas's own
    argv = fresh_args(kind, tmp_path, kind)
    argv[argv.index("--epochs") + 1] = "1"
    assert main([*argv, "--overwrite"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1]
    assert not (run / "checkpoint.prev.pt").exists() and not (run / "eval.json").exists()
    assert (run / "log.txt").read_text().count(f"fastnas {kind}: ") == 1  # the old log went too


@pytest.mark.parametrize("foreign", ["notes.txt", "scratch.tmp", "checkpoint-best.pt", "plots"])
@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_never_deletes_files_fastnas_did_not_write(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, foreign: str
) -> None:
    run = copy_run(finished, kind, tmp_path)
    if foreign == "plots":
        (run / foreign).mkdir()
    else:
        (run / foreign).write_text("the user's\n")
    before = snapshot(run)
    refused(capsys, [*fresh_args(kind, tmp_path, kind), "--overwrite"], str(run), foreign, "did not write")
    assert snapshot(run) == before and (run / foreign).exists()


# --------------------------------------------------------------------------------- other refusals
@pytest.mark.parametrize(
    "content", [b"just some text\n", random.Random(1).randbytes(3000)], ids=["text", "random-bytes"]
)
def test_eval_only_of_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    refused(
        capsys,
        ["train", "--eval-only", str(path), "--no-progress"],
        str(path),
        "no fastnas checkpoint trailer",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_eval_only_of_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["train", "--eval-only", str(tmp_path / "nope.pt")], str(tmp_path / "nope.pt"))
    refused(capsys, ["train", "--eval-only", str(tmp_path)], str(tmp_path / "checkpoint.pt"))


@pytest.mark.parametrize("options", [["--order", "2"], ["--order=2", "--init-scale", "0.1"]])
def test_method_options_cannot_change_on_resume(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    run = copy_run(finished, "search", tmp_path)
    before = snapshot(run)
    refused(capsys, resume("search", run, *options), "--resume", "order", "cannot change")
    assert snapshot(run) == before


def test_a_start_killed_before_its_config_was_written_is_started_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fastnas train` writes the genotype, then config.json; a kill in between leaves no run, so the same
    command starts it (it is not refused as an existing run, and --resume is not needed)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text('{"format": "stale"}\n')
    (run / "genotype.txt").write_text("stale\n")
    (run / ".genotype.json.x1y2z3.tmp").write_text("partial")
    assert main(fresh_args("train", tmp_path)) == 0
    assert (run / "config.json").is_file() and (run / "result.json").is_file()
    assert json.loads((run / "genotype.json").read_text())["format"] != "stale"
    assert not list(run.glob(".*.tmp"))
    capsys.readouterr()


@pytest.mark.parametrize("kind", KINDS)
def test_run_settings_cannot_change_on_resume(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A changed --epochs would keep the old cosine schedule (the learning rate would rise again): a
    resumed run keeps its recorded settings, and says so; only --device may be given."""
    run = copy_run(finished, kind, tmp_path)
    before = snapshot(run)
    refused(
        capsys, resume(kind, run, "--epochs", "5"), "--resume uses the run's recorded settings", "--epochs"
    )
    refused(capsys, resume(kind, run, "--lr=0.5", "--seed", "3"), "--lr", "--seed", "allowed: --device")
    assert snapshot(run) == before
    assert main(resume(kind, run, "--device", "cpu")) == 0  # finished: reloads (and re-evaluates)
    capsys.readouterr()


def test_eval_only_takes_only_the_evaluation_settings(
    finished: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(finished, "train", tmp_path)
    refused(capsys, ["train", "--eval-only", str(run), "--epochs", "3"], "--eval-only", "--epochs")
    refused(
        capsys, ["train", "--eval-only", str(run), "--resume", str(run)], "either --eval-only or --resume"
    )
    assert main(["train", "--eval-only", str(run), "--batch-size", "8", "--no-progress"]) == 0
    assert "test top-1" in capsys.readouterr().out
