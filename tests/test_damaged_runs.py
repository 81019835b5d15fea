"""Run state a user edited or damaged, met through ``fastnas search --resume`` (and ``train --resume``).

One search (3 epochs) interrupted when its third epoch starts is the template: its checkpoint holds
epoch 2, its ``metrics.jsonl`` / ``alphas.jsonl`` (and DDSAS's ``sampling.jsonl``) the rows of epochs 1
and 2. Each test damages a copy and resumes it:

- every damaged form of a history file is refused (exit 2, one ``fastnas search: error:`` line naming the
  file and the line), and no file of the run changes;
- a directory, a FIFO, a ``/dev/zero`` symlink or an oversize file in place of a run file is refused the
  same way, naming the file and what is there, without hanging or filling memory;
- the two traces of a kill - a torn last line past the checkpoint, complete rows past it - are mended
  with a line in the log, and the resumed run writes the history of an uninterrupted run;
- ``--repair-history`` drops the damaged rows, records the gap, and the run goes on (and resumes again
  without the flag).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import interrupt_search_at, tiny_search

from fastnas import run_search
from fastnas.cli import main
from fastnas.train.run_state import REPAIRS_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMES = ("epoch_time_s", "images_per_s", "data_wait_s", "peak_memory_mb", "train_time_s")
TRAIN_ARGS = ["--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "2", "--C", "4", "--layers", "3"]
TRAIN_ARGS += [
    "--limit",
    "32",
    "--test-limit",
    "32",
    "--batch-size",
    "16",
    "--no-progress",
    "--device",
    "cpu",
]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Templates (never modified: tests work on copies): ``darts`` and ``ddsas`` interrupted after epoch
    2 of 3, ``darts-done`` and ``ddsas-done`` the same searches uninterrupted, ``train`` a retraining
    run rolled back to its epoch-1 checkpoint (its metrics still hold the row of epoch 2)."""
    base = tmp_path_factory.mktemp("templates")
    patch = pytest.MonkeyPatch()
    try:
        for method in ("darts", "ddsas"):
            interrupt_search_at(patch, 2, tiny_search(base, method, epochs=3, run_name=method))
            run_search(tiny_search(base, method, epochs=3, run_name=f"{method}-done"), progress=False)
    finally:
        patch.undo()
    assert main(["train", *TRAIN_ARGS, "--out-dir", str(base), "--run-name", "train"]) == 0
    train = base / "train"
    os.replace(train / "checkpoint.prev.pt", train / "checkpoint.pt")
    (train / "result.json").unlink()
    return {name: base / name for name in ("darts", "ddsas", "darts-done", "ddsas-done", "train")}


def copy(runs: dict[str, Path], name: str, dest: Path) -> Path:
    run = dest / name
    shutil.copytree(runs[name], run, symlinks=True)
    return run


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Name -> (size, mtime, SHA-256) of every regular file in ``folder`` (special files are not opened)."""
    out = {}
    for path in sorted(folder.iterdir()):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            out[path.name] = (info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture
def watchdog(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``watchdog(fifo)``: should the code under test open ``fifo`` (a check gone missing), it is
    unblocked after 20 s - by a writer that closes at once (a reader sees an empty file) or a reader (a
    writer can write) - so that the test fails instead of hanging."""
    done = threading.Event()
    fifos: list[Path] = []

    def unblock() -> None:
        if done.wait(20):
            return
        for fifo in fifos:
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(writer)
            os.close(reader)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield fifos.append
    done.set()
    thread.join()


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    """Run the command line; it must exit 2 with one ``fastnas CMD: error:`` line holding ``words``."""
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


def resume(run: Path, *extra: str, kind: str = "search") -> list[str]:
    return [kind, "--resume", str(run), "--no-progress", *extra]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_times(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in table]


def edit_row(index: int, change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """Rewrite row ``index`` of the file as ``change(row)`` returns it (or the row it changed in place)."""

    def damage(path: Path) -> None:
        lines = lines_of(path)
        row = json.loads(lines[index])
        changed = change(row)
        lines[index] = json.dumps(row if changed is None else changed) + "\n"
        path.write_text("".join(lines))

    return damage


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda row: row.__setitem__(key, value)


def replace_line(index: int, text: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        lines = lines_of(path)
        lines[index] = text
        path.write_text("".join(lines))

    return damage


def cut_in_row(index: int) -> Callable[[Path], None]:
    """Cut the file in the middle of row ``index`` (the kind of cut a half-copied file has)."""

    def damage(path: Path) -> None:
        lines = lines_of(path)
        path.write_text("".join(lines[:index]) + lines[index][: len(lines[index]) // 2])

    return damage


# ---------------------------------------------------------------------------------- damaged histories
# name: (damage, words of the message beyond the file's path); the template's rows are epochs 1 and 2
HISTORY_DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "emptied": (lambda p: p.write_bytes(b""), ("line 1: no row of epochs 1, 2", "the file ends before")),
    "deleted": (lambda p: p.unlink(), ("is missing, but the checkpoint has finished epochs 1, 2",)),
    "last row deleted": (
        lambda p: p.write_text(lines_of(p)[0]),
        ("line 2: no row of epoch 2", "ends after epoch 1"),
    ),
    "cut in the last row": (
        cut_in_row(1),
        ("line 2: ends in a partial line", "of epoch 2, which the checkpoint"),
    ),
    "cut in the first row": (
        cut_in_row(0),
        ("line 1: ends in a partial line", "of epoch 1, which the checkpoint"),
    ),
    "zero-filled": (
        lambda p: p.write_bytes(bytes(p.stat().st_size)),
        ("line 1: the file holds only zero bytes",),
    ),
    "zero tail": (lambda p: p.write_bytes(p.read_bytes() + bytes(300)), ("line 3: holds zero bytes",)),
    "zeros in a row": (replace_line(1, "\0" * 40 + "\n"), ("line 2: holds zero bytes",)),
    "epoch a string": (
        edit_row(0, set_key("epoch", "0")),
        ('line 1: its "epoch" is a string "0", not a whole',),
    ),
    "epoch a float": (edit_row(1, set_key("epoch", 2.0)), ('line 2: its "epoch" is a number 2.0',)),
    "epoch true": (edit_row(0, set_key("epoch", True)), ('line 1: its "epoch" is true',)),
    "no epoch": (edit_row(0, lambda r: r.__delitem__("epoch")), ('line 1: has no "epoch"',)),
    "an array row": (replace_line(0, "[1, 2]\n"), ("line 1: holds an array, not an object",)),
    "a number row": (replace_line(1, "2\n"), ("line 2: holds a number, not an object",)),
    "duplicated row": (
        lambda p: p.write_text(p.read_text() + lines_of(p)[-1]),
        ("line 3: a second row of epoch 2",),
    ),
    "duplicated first row": (
        lambda p: p.write_text("".join(lines_of(p)[:1] + lines_of(p))),
        ("line 2: a second row of epoch 1", "duplicated"),
    ),
    "rows swapped": (
        lambda p: p.write_text("".join(lines_of(p)[::-1])),
        ("line 1: epoch 2 where epoch 1 was",),
    ),
    "epoch renumbered": (edit_row(1, set_key("epoch", 5)), ("line 2: epoch 5 where epoch 2 was expected",)),
    "epoch 0": (edit_row(0, set_key("epoch", 0)), ("line 1: epoch 0 comes before the run's first epoch 1",)),
    "NaN": (edit_row(1, lambda r: r.__setitem__(list(r)[-1], float("nan"))), ("line 2: holds NaN",)),
    "Infinity": (replace_line(0, '{"epoch": 1, "x": -Infinity}\n'), ("line 1: holds -Infinity",)),
    "unknown key": (
        edit_row(0, set_key("note", "good run")),
        ("line 1: has the key(s) 'note', which fastnas does",),
    ),
    "repeated key": (
        lambda p: p.write_text(lines_of(p)[0] + lines_of(p)[1].replace("{", '{"epoch": 2, ', 1)),
        ("line 2: repeats the key 'epoch'",),
    ),
    "empty line": (lambda p: p.write_text("\n".join(lines_of(p))), ("line 2: is empty",)),
    "not UTF-8": (lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\n"), ("line 3: is not UTF-8 text",)),
    "garbled line": (
        replace_line(0, '{"epoch": 1, "train_lo\n'),
        ("line 1: not valid JSON", "repair or delete"),
    ),
    "trailing garbage": (
        lambda p: p.write_text(p.read_text() + "written by hand"),
        ("line 3: ends in a partial line", "not the start of a row"),
    ),
}
FILES = ("metrics.jsonl", "alphas.jsonl")
SAMPLING_DAMAGE = ("deleted", "duplicated row", "epoch a string", "unknown key")


# every form once, on metrics.jsonl and alphas.jsonl in turn (one resume takes most of a second)
CASES = [(FILES[index % 2], form) for index, form in enumerate(HISTORY_DAMAGE)]
CASES += [("sampling.jsonl", form) for form in SAMPLING_DAMAGE]


@pytest.mark.parametrize(("name", "form"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_a_damaged_history_is_refused_naming_file_and_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, form: str
) -> None:
    run = copy(runs, "ddsas" if name == "sampling.jsonl" else "darts", tmp_path)
    damage, words = HISTORY_DAMAGE[form]
    if name == "sampling.jsonl" and form == "duplicated row":  # several rows an epoch, told by "resample"
        words = ('"resample"', "a duplicated or out-of-order row")
    damage(run / name)
    before = snapshot(run)
    line = refused(capsys, resume(run), str(run / name), *words)
    assert "--repair-history" in line
    assert snapshot(run) == before


def test_a_repeated_resample_of_one_epoch_is_refused(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "ddsas", tmp_path)
    path = run / "sampling.jsonl"
    first = [line for line in lines_of(path) if json.loads(line)["epoch"] == 1]
    path.write_text("".join(first[:1] + lines_of(path)))
    before = snapshot(run)
    refused(capsys, resume(run), f'{path}, line 2: its "resample" 1 does not follow 1')
    assert snapshot(run) == before


def test_a_retraining_history_is_refused_too(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "train", tmp_path)
    edit_row(0, set_key("val_acc", 99.0))(run / "metrics.jsonl")  # a search key in a retraining history
    before = snapshot(run)
    refused(capsys, resume(run, kind="train"), f"{run / 'metrics.jsonl'}, line 1: has the key(s) 'val_acc'")
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------- special files
SPECIAL_NAMES = ("checkpoint.pt", "checkpoint.prev.pt", "config.json", "metrics.jsonl", "alphas.jsonl")
SPECIAL_NAMES += ("genotype.json",)


def make_directory(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()
    (path / "inside.txt").write_text("a folder where a run file belongs")


def make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def make_dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


SPECIAL = {
    "directory": (make_directory, "is a directory, not a regular file"),
    "FIFO": (make_fifo, "is a FIFO (named pipe), not a regular file"),
    "/dev/zero": (make_dev_zero, "is a character device (a symlink to /dev/zero), not a regular file"),
}
SPECIAL_CASES = [(name, form) for name in SPECIAL_NAMES for form in SPECIAL]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX")
@pytest.mark.parametrize(("name", "form"), SPECIAL_CASES, ids=[f"{n}-{f}" for n, f in SPECIAL_CASES])
def test_a_special_file_in_place_of_a_run_file_is_refused(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    watchdog: Callable[[Path], None],
    name: str,
    form: str,
) -> None:
    run = copy(runs, "darts", tmp_path)
    make, words = SPECIAL[form]
    make(run / name)
    if form == "FIFO":
        watchdog(run / name)
    before = snapshot(run)
    refused(capsys, resume(run), str(run / name), words)
    assert snapshot(run) == before
    assert (run / name).is_dir() if form == "directory" else not (run / name).is_file()


BOUNDS = {  # the bound of each file kind, lowered so that a test file can exceed it
    "checkpoint.pt": "FASTNAS_MAX_CHECKPOINT_BYTES",
    "checkpoint.prev.pt": "FASTNAS_MAX_CHECKPOINT_BYTES",
    "config.json": "FASTNAS_MAX_JSON_BYTES",
    "metrics.jsonl": "FASTNAS_MAX_HISTORY_BYTES",
    "alphas.jsonl": "FASTNAS_MAX_HISTORY_BYTES",
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_a_file_larger_than_its_bound_is_refused_before_it_is_read(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    run = copy(runs, "darts", tmp_path)
    bound = 4 * 2**20  # far above what the template's files hold
    assert max(p.stat().st_size for p in run.iterdir() if p.is_file()) < bound
    monkeypatch.setenv(BOUNDS[name], str(bound))
    os.truncate(run / name, bound + 1)  # a sparse tail of zeros
    before = snapshot(run)
    refused(capsys, resume(run), str(run / name), "is larger than 4 MiB (4,194,305 bytes)", BOUNDS[name])
    assert snapshot(run) == before


def test_the_default_bounds_refuse_a_sparse_giant(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "darts", tmp_path)
    os.truncate(run / "metrics.jsonl", 2**31)  # 2 GiB of zeros that take no disk space
    refused(capsys, resume(run), str(run / "metrics.jsonl"), "is larger than 1 GiB")


# ------------------------------------------------------------------- the traces of a kill, mended
TORN = [("darts", "metrics.jsonl", cut) for cut in ("mid-row", "after the epoch", "two characters")]
TORN += [("darts", "alphas.jsonl", "mid-row"), ("ddsas", "sampling.jsonl", "mid-row")]


@pytest.mark.parametrize(("method", "name", "cut"), TORN)
def test_a_torn_last_line_past_the_checkpoint_is_dropped_and_the_history_is_that_of_an_uninterrupted_run(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    name: str,
    cut: str,
) -> None:
    run, done = copy(runs, method, tmp_path), runs[f"{method}-done"]
    finished = lines_of(done / name)
    next_row = finished[len(lines_of(run / name))]  # the row the kill was appending (epoch 3)
    assert json.loads(next_row)["epoch"] == 3
    torn = {
        "mid-row": next_row[: len(next_row) // 2],
        "after the epoch": next_row[:12],
        "two characters": '{"',
    }
    with (run / name).open("a") as handle:
        handle.write(torn[cut])
    capsys.readouterr()
    assert main(resume(run)) == 0
    warning = f"{run / name}: dropping a torn last line ({len(torn[cut])} characters, an interrupted append)"
    assert warning in capsys.readouterr().out
    assert warning in (run / "log.txt").read_text()
    for history in ("metrics.jsonl", "alphas.jsonl", "sampling.jsonl"):
        if (done / history).exists():
            assert without_times(rows(run / history)) == without_times(rows(done / history)), history


def test_complete_rows_past_the_checkpoint_are_redone(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, done = copy(runs, "darts", tmp_path), runs["darts-done"]
    for name in ("metrics.jsonl", "alphas.jsonl"):  # the kill came after the appends, before the checkpoint
        (run / name).write_text("".join(lines_of(done / name)))
    capsys.readouterr()
    assert main(resume(run)) == 0
    assert "metrics.jsonl: dropping 1 row(s) of epochs >= 3 (redone now)" in capsys.readouterr().out
    assert without_times(rows(run / "metrics.jsonl")) == without_times(rows(done / "metrics.jsonl"))
    assert rows(run / "alphas.jsonl") == rows(done / "alphas.jsonl")


def test_an_undamaged_resume_rewrites_no_history(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "darts-done", tmp_path)
    before = snapshot(run)
    assert main(resume(run)) == 0  # finished: nothing to redo
    after = snapshot(run)
    for name in ("metrics.jsonl", "alphas.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "config.json"):
        assert after[name] == before[name], name
    assert REPAIRS_NAME not in after


# ---------------------------------------------------------------------------------- --repair-history
REPAIRS = {
    # form: (file, damage, epochs the repaired history lacks, lines dropped)
    "duplicated row": ("metrics.jsonl", HISTORY_DAMAGE["duplicated row"][0], [], "line 3"),
    "NaN": ("metrics.jsonl", HISTORY_DAMAGE["NaN"][0], [2], "line 2"),
    "unknown key": ("alphas.jsonl", HISTORY_DAMAGE["unknown key"][0], [1], "line 1"),
    "rows swapped": ("metrics.jsonl", HISTORY_DAMAGE["rows swapped"][0], [1], "line 2"),
    "zero-filled": ("alphas.jsonl", HISTORY_DAMAGE["zero-filled"][0], [1, 2], "line 1"),
    "deleted": ("metrics.jsonl", HISTORY_DAMAGE["deleted"][0], [1, 2], "found the file missing"),
}
AGAIN = ("NaN", "deleted")  # forms whose repaired run is resumed once more, without the flag


@pytest.mark.parametrize("form", list(REPAIRS))
def test_repair_history_drops_the_damaged_rows_records_the_gap_and_continues(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    name, damage, gap, dropped = REPAIRS[form]
    run, done = copy(runs, "darts", tmp_path), runs["darts-done"]
    damage(run / name)
    other = "alphas.jsonl" if name == "metrics.jsonl" else "metrics.jsonl"
    capsys.readouterr()
    assert main(resume(run, "--repair-history")) == 0
    out = capsys.readouterr().out
    note = f"{name}: --repair-history {'dropped' if 'line' in dropped else ''}"
    assert note in out and dropped in out, out
    if gap:
        assert f"now have no row - a gap in the history, recorded in {REPAIRS_NAME}" in out
        assert json.loads((run / REPAIRS_NAME).read_text()) == {name: gap}
    else:
        assert not (run / REPAIRS_NAME).exists()
    expected = [e for e in (1, 2, 3) if e not in gap]
    assert [r["epoch"] for r in rows(run / name)] == expected
    kept = [r for r in rows(done / name) if r["epoch"] in expected]
    assert without_times(rows(run / name)) == without_times(kept)  # epoch 3 run after the repair
    assert without_times(rows(run / other)) == without_times(rows(done / other))  # untouched, then run on
    if form not in AGAIN:
        return
    # the gap is recorded: the run resumes again without the flag, and its histories stay as they are
    kept_files = ("metrics.jsonl", "alphas.jsonl", "checkpoint.pt", "checkpoint.prev.pt", REPAIRS_NAME)
    before = {k: v for k, v in snapshot(run).items() if k in kept_files}
    assert main(resume(run)) == 0
    assert {k: v for k, v in snapshot(run).items() if k in kept_files} == before


def test_repair_history_in_a_retraining_run(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "train", tmp_path)
    path = run / "metrics.jsonl"  # checkpoint: epoch 1; rows of epochs 1 and 2
    edit_row(0, set_key("test_top1", float("inf")))(path)
    refused(capsys, resume(run, kind="train"), f"{path}, line 1: holds Infinity")
    assert main(resume(run, "--repair-history", kind="train")) == 0
    assert "metrics.jsonl: --repair-history dropped 1 damaged line(s) (line 1)" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(path)] == [2]
    assert json.loads((run / REPAIRS_NAME).read_text()) == {"metrics.jsonl": [1]}
    assert (run / "result.json").is_file()


def test_repair_history_still_refuses_a_special_file(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy(runs, "darts", tmp_path)
    make_directory(run / "alphas.jsonl")
    refused(capsys, resume(run, "--repair-history"), f"{run / 'alphas.jsonl'} is a directory")


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--dataset", "digits", "--repair-history"],
        ["train", "--genotype", "DARTS_V2", "--repair-history"],
        ["train", "--eval-only", "x/checkpoint.pt", "--repair-history"],
    ],
)
def test_repair_history_needs_resume(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    refused(capsys, argv, "--repair-history mends the history files of a run being resumed")


def test_the_help_says_what_repair_history_drops(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("search", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--repair-history" in text
        assert "drop their damaged rows" in text and "gap in the history" in text
