"""What search and retraining runs share: the run directory, its log, its history files, the divergence
check and the resume protocol.

Resume protocol (:func:`open_checkpoint`): the checkpoint is verified (checksum), loaded without
running any code, checked key by key and range-checked *before* anything in the run directory is
rewritten; only then are the history files trimmed to the checkpoint's epoch. If the newest checkpoint
fails verification, the previous one is used with a logged warning. :func:`resume_run` is the whole
resume of both kinds of run: open the checkpoint, check it is finite, let the run restore it, trim the
history files.

Epoch numbering (:data:`EPOCH_BASE`): the files of a run count epochs from 1, as its log does
(``epoch 1/3`` and ``"epoch": 1`` are the first epoch); the loops count from 0 internally and convert
where they write and read. A run's ``config.json`` records the numbering of its files as ``epoch_base``;
runs written by earlier versions of fastnas have no such key and numbered their files from 0: they keep
that numbering when resumed, and :func:`read_history` renumbers their rows for readers.

History files on resume (:func:`trim_histories`): ``metrics.jsonl``, ``alphas.jsonl`` (and a method's
records, ``sampling.jsonl``) must hold exactly the rows of the epochs the checkpoint has finished, in
order, as fastnas wrote them. Two things are expected and mended with a line in the log: complete rows of
epochs *after* the checkpoint (a kill between the append and the checkpoint: they are redone), and a torn
last line past the checkpoint (a kill in the middle of an append: the start of the next epoch's row, no
newline). Anything else is refused before any file is rewritten, with one line naming the file and the
line: a missing file or missing rows of finished epochs, a row that is not a JSON object, an ``"epoch"``
that is not a whole number or is repeated, out of order or skipped, ``NaN`` / ``Infinity``, a key
fastnas does not write to that file (:data:`HISTORY_KEYS`), a repeated key, zero bytes (a file system's
hole), an empty line. Resuming with ``--repair-history`` (:func:`repairing_histories`) drops the damaged
rows instead; the finished epochs left without a row are a gap in the history, noted in the log and in
``repairs.json`` (:data:`REPAIRS_NAME`), which later resumes accept.

Special files: a resume first checks that none of the run's files (:data:`RUN_FILES`, the checkpoints) is
a directory, a FIFO, a device or a dangling symlink, and that the checkpoints are not larger than
:func:`~fastnas.fileio.max_checkpoint_bytes`; every reader opens regular files only, with a bound on what
it reads (:func:`~fastnas.fileio.read_regular_bytes`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from fastnas.errors import CheckpointError, ConfigError, DataError, NonFiniteError, RunExistsError
from fastnas.fileio import (
    append_text,
    atomic_write,
    atomic_write_json,
    history_bytes_bound,
    max_checkpoint_bytes,
    read_json_file,
    read_jsonl,
    read_regular_bytes,
    regular_file_size,
    remove_stale_temporaries,
)
from fastnas.train.checkpoint import (
    CHECKPOINT_NAME,
    LoadedCheckpoint,
    check_epoch,
    check_finite,
    check_state,
    has_checkpoint,
    load_checkpoint,
    previous_checkpoint_path,
)
from fastnas.train.device import resolve_device
from fastnas.train.distributed import Distributed, check_world_size

__all__ = [
    "EPOCH_BASE",
    "HISTORY_KEYS",
    "REPAIRS_NAME",
    "RUN_FILES",
    "NonFiniteMonitor",
    "RunLog",
    "check_epoch_base",
    "check_run_dir_free",
    "check_run_files",
    "open_checkpoint",
    "prepare_run_dir",
    "read_history",
    "repairing_histories",
    "resume_run",
    "run_epoch_base",
    "trim_histories",
]

EPOCH_BASE = 1
"""The number a run's files give its first epoch (``metrics.jsonl``, ``alphas.jsonl``, ``sampling.jsonl``,
the checkpoint's last finished epoch): 1, as in the log. Recorded in ``config.json`` as ``epoch_base``;
a ``config.json`` without it was written by an earlier fastnas, whose files counted from 0."""


def check_epoch_base(value: object) -> int:
    """``value`` as an epoch base (0: a run of an earlier version, 1: this one), or a clear error."""
    if isinstance(value, bool) or value not in (0, 1):
        raise ConfigError(
            f"'epoch_base' must be 1 (files count epochs from 1) or 0 (a run of an earlier "
            f"fastnas, which counted from 0), got {value!r}"
        )
    return 1 if value == 1 else 0


def run_epoch_base(run_dir: Path) -> int:
    """How the files of the run in ``run_dir`` number epochs: the ``epoch_base`` of its ``config.json``,
    0 where it has none (a run of an earlier version)."""
    path = Path(run_dir) / "config.json"
    data = read_json_file(path, f"{run_dir} is not a run directory (no config.json)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a JSON object of settings, got {type(data).__name__}")
    try:
        return check_epoch_base(data.get("epoch_base", 0))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_history(path: Path, epoch_base: int) -> list[dict[str, Any]]:
    """The rows of the history file ``path`` (``metrics.jsonl``, ``alphas.jsonl``...; none if it does not
    exist) with ``"epoch"`` numbered from 1 whatever ``epoch_base`` the run wrote them with."""
    if not path.exists():
        return []
    shift = 1 - epoch_base
    rows = [r for r in read_jsonl(path) if isinstance(r, dict)]
    if shift:
        rows = [{**r, "epoch": r["epoch"] + shift} if isinstance(r.get("epoch"), int) else r for r in rows]
    return rows


RUN_FILES = (
    "config.json",
    "genotype.json",
    "genotype.txt",
    "metrics.jsonl",
    "alphas.jsonl",
    "log.txt",
    "consistency.json",
    "result.json",
    "eval.json",
    "rank.json",
    "sampling.jsonl",
    "stages.json",
    "repairs.json",
)
"""Files fastnas writes into a run directory (besides the checkpoints and their temporaries)."""


_CHECKPOINT_FILES = (CHECKPOINT_NAME, previous_checkpoint_path(CHECKPOINT_NAME).name)
#: Folders fastnas writes into a run directory (``--tensorboard`` events, ``fastnas plot`` pictures).
RUN_FOLDERS = ("tensorboard", "plots")


def _fastnas_file(path: Path) -> bool:
    """A file fastnas writes into a run directory: a run file, a checkpoint, or the temporary file
    (``.NAME.*.tmp``) of an interrupted write of one of them."""
    name = path.name
    if name in RUN_FOLDERS and path.is_dir():  # ours only while it holds nothing but our files
        ours = ".png" if name == "plots" else "events.out.tfevents"
        entries = list(path.iterdir())
        return bool(entries) and all(p.is_file() and (ours in p.name) for p in entries)
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].removesuffix(".tmp").rsplit(".", 1)[0]  # .checkpoint.pt.k2j4x9.tmp -> checkpoint.pt
    return path.is_file() and (name in RUN_FILES or name in _CHECKPOINT_FILES)


def check_run_dir_free(run_dir: Path, overwrite: bool, command: str) -> None:
    """Refuse to start a fresh run in a folder that already holds files, unless ``overwrite``; even then,
    files fastnas did not write are never deleted. A folder holding only the first files of a start that
    was killed before its ``config.json`` was written (the last of a run's inputs) holds no run: it is
    reused."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} exists and is not a folder; choose another --run-name or --out-dir")
    _check_writable(run_dir)
    if not run_dir.is_dir():
        return
    entries = list(run_dir.iterdir())
    if not entries:
        return
    unstarted = {"genotype.json", "genotype.txt", "log.txt"}
    if not (run_dir / "config.json").exists() and all(
        _fastnas_file(p) and (p.name in unstarted or p.name.endswith(".tmp")) for p in entries
    ):
        return
    if not overwrite:
        if (run_dir / "config.json").exists():
            hint = f"continue it with `fastnas {command} --resume {run_dir}`, choose another --run-name"
        else:
            hint = "choose another --run-name or --out-dir"
        raise RunExistsError(
            f"run directory {run_dir} is not empty; {hint}, or pass --overwrite to replace the run in it"
        )
    foreign = sorted(p.name for p in entries if not _fastnas_file(p))
    if foreign:
        raise RunExistsError(
            f"run directory {run_dir} holds files fastnas did not write ({', '.join(foreign[:5])}); "
            "--overwrite replaces only a run's own files - move them or choose another --run-name"
        )


def _check_writable(run_dir: Path) -> None:
    """The run directory, or the nearest folder above it that exists, must be a writable folder."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"cannot create the run directory {run_dir}: {existing} is a file, not a folder; choose another "
            "--out-dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the run directory {run_dir}: {existing} is not writable (a read-only file system "
            "or missing permissions); choose another --out-dir"
        )


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """Create the folder of a fresh run (after :func:`check_run_dir_free`), removing an old run's files
    when ``overwrite`` and the leftovers of a start that never wrote its ``config.json``."""
    if run_dir.is_dir() and (overwrite or not (run_dir / "config.json").exists()):
        for path in run_dir.iterdir():
            if _fastnas_file(path):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _silent(line: str) -> None:
    """The log of ranks other than 0 (rank 0 alone prints and writes ``log.txt``)."""


class RunProcess(NamedTuple):
    """This process's part of a run (search or retraining): its process group, whether it shows progress,
    its log (rank 0 writes ``log.txt``; other ranks are silent) and its device."""

    dist: Distributed
    progress: bool
    log: Callable[[str], None]
    device: torch.device


def start_process(
    run_dir: Path,
    configured_device: str,
    world_size: int,
    progress: bool,
    device: str | None,
    dist: Distributed | None,
) -> RunProcess:
    """This process's part of the run in ``run_dir`` (``device`` overrides the configured one; the world
    size must be the one the run was configured for)."""
    dist = dist or Distributed()
    check_world_size(world_size, dist)
    shown = progress and dist.is_main
    log: Callable[[str], None] = RunLog(run_dir, shown) if dist.is_main else _silent
    return RunProcess(dist, shown, log, resolve_device(dist.device_for(device or configured_device)))


class RunLog:
    """Prints a line (above the progress bar when there is one) and appends it to ``log.txt``."""

    def __init__(self, run_dir: Path, progress: bool) -> None:
        self.path = run_dir / "log.txt"
        self.progress = progress

    def __call__(self, line: str) -> None:
        tqdm.write(line) if self.progress else print(line, flush=True)
        append_text(self.path, line + "\n")


def open_checkpoint(
    run_dir: Path,
    schema: Mapping[str, type | tuple[type, ...]],
    epochs: int,
    map_location: torch.device,
    log: Callable[[str], None],
    clean: bool = True,
    *,
    epoch_base: int,
    bind: Callable[[LoadedCheckpoint], None] = lambda loaded: None,  # checks it belongs to the run
) -> LoadedCheckpoint | None:
    """The run's newest good checkpoint, verified and checked against ``schema`` and ``epochs`` (its
    ``epoch``, the last finished one numbered from ``epoch_base``, must be one of the run's), or None when
    the run has none yet. With ``clean`` (the process that writes the run: rank 0 under torchrun) stale
    temporary files that a kill left behind are removed first (after :func:`check_run_files`: a run
    directory holding a special file in place of a run file is refused before anything in it changes)."""
    check_run_files(run_dir)
    if clean:
        for tmp in remove_stale_temporaries(run_dir, names=(*RUN_FILES, *_CHECKPOINT_FILES)):
            log(f"removed {tmp.name}, a temporary file left by an interrupted write")
    path = run_dir / CHECKPOINT_NAME
    if not has_checkpoint(path):
        return None
    loaded = load_checkpoint(path, map_location=map_location, warn=log)
    check_state(loaded.state, schema, loaded.path)
    bind(loaded)  # before the epoch range: an edited --epochs is named as such
    check_epoch(loaded.state["epoch"], epochs, loaded.path, epoch_base=epoch_base)
    return loaded


def resume_run(
    run_dir: Path,
    schema: Mapping[str, type | tuple[type, ...]],
    epochs: int,
    map_location: torch.device,
    log: Callable[[str], None],
    *,
    main: bool,
    epoch_base: int,
    bind: Callable[[LoadedCheckpoint], None],
    restore: Callable[[LoadedCheckpoint], None],
    histories: Sequence[Path],
) -> LoadedCheckpoint | None:
    """Continue the run in ``run_dir`` from its newest good checkpoint (:func:`open_checkpoint`), if it has
    one: its state must be finite (:func:`~fastnas.train.checkpoint.check_finite`), then ``restore`` puts
    it into the run. The process that writes the run (``main``) then trims the ``histories`` to the epochs
    the checkpoint finished (:func:`trim_histories`: a damaged history file stops the run here, before it
    announces itself). Returns the checkpoint, or None when the run starts from its first epoch."""
    loaded = open_checkpoint(
        run_dir, schema, epochs, map_location, log, clean=main, epoch_base=epoch_base, bind=bind
    )
    finished = 0
    if loaded is not None:
        check_finite(loaded.state, loaded.path)
        restore(loaded)
        finished = loaded.state["epoch"] - epoch_base + 1
    if main:
        trim_histories(histories, finished, log, epoch_base=epoch_base)
    if loaded is None:
        log(f"{run_dir} has no checkpoint yet; starting it from epoch 1")
    else:
        log(f"resuming {run_dir} after epoch {finished}/{epochs}")
    return loaded


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory that holds anything but a regular file (or a symlink to one) where fastnas
    reads or writes a run file or a checkpoint - a directory, a FIFO (an open would block), a device
    (``/dev/zero`` never ends), a socket, a dangling symlink - or a checkpoint larger than
    :func:`~fastnas.fileio.max_checkpoint_bytes`: one line naming the file and what is there, before
    anything in the run is read into memory or changed."""
    checkpoint_bound = max_checkpoint_bytes()
    for name in (*_CHECKPOINT_FILES, *RUN_FILES):
        path = run_dir / name
        if not os.path.lexists(path):
            continue
        checkpoint = name in _CHECKPOINT_FILES
        try:
            regular_file_size(
                path,
                checkpoint_bound if checkpoint else None,
                error=CheckpointError if checkpoint else DataError,
                bound="FASTNAS_MAX_CHECKPOINT_BYTES",
            )
        except FileNotFoundError:  # removed since lexists()
            continue


# ------------------------------------------------------------------------------------ history files
_SEARCH_METRICS = frozenset(
    {
        "epoch", "train_loss", "train_acc", "lr", "images_per_s", "data_wait_s", "stage", "stage_epoch",
        "val_loss", "val_acc", "alpha_entropy", "genotype", "skip_connect_count", "arch_cosine_distance",
        "epoch_time_s", "peak_memory_mb", "table",
    }
)  # fmt: skip
_TRAIN_METRICS = frozenset(
    {
        "epoch", "train_loss", "train_top1", "lr", "drop_path_prob", "images_per_s", "train_time_s",
        "test_loss", "test_top1", "test_top5", "num_test_images", "epoch_time_s",
    }
)  # fmt: skip
HISTORY_KEYS: dict[str, dict[str, frozenset[str]]] = {
    "search": {
        "metrics.jsonl": _SEARCH_METRICS,
        "alphas.jsonl": frozenset({"epoch", "parameters", "weights"}),
        "sampling.jsonl": frozenset(
            {"epoch", "stage_epoch", "step", "resample", "random", "subspace", "counts", "ucb"}
        ),
    },
    "train": {"metrics.jsonl": _TRAIN_METRICS},
}
"""The keys of the rows fastnas writes to each history file of a search (its histories include
``alphas.jsonl``) and of a retraining run. A row with another key was not written by fastnas and is
refused on resume: a runner that starts writing a new key adds it here. A history file not listed here (a
new method's records) is checked for everything but its keys."""

_COUNTERS = {"sampling.jsonl": "resample"}
"""History files with several rows an epoch, and the key that orders the rows of one epoch (DDSAS draws at
the first step of every epoch, so every finished epoch has at least one row)."""

REPAIRS_NAME = "repairs.json"
"""The run file where ``--repair-history`` records, per history file, the finished epochs it left without
a row (``{"metrics.jsonl": [2, 3]}``); later resumes accept those gaps."""

_REPAIR: contextvars.ContextVar[bool] = contextvars.ContextVar("fastnas_repair_history", default=False)
_ROW_START = b'{"epoch": '  # how every row fastnas appends starts (json.dumps, "epoch" first)
_TORN_ROW = re.compile(rb'\{"epoch": (-?[0-9]+)(.*)', re.S)
_REFUSED = (
    "the history file is damaged - repair or delete that line, or resume with --repair-history to drop the "
    "damaged rows (the finished epochs left without a row become a gap in the history)"
)


@contextlib.contextmanager
def repairing_histories(enabled: bool = True) -> Iterator[None]:
    """While active (``fastnas search/train --resume RUN --repair-history``), :func:`trim_histories`
    drops the damaged rows of a history file instead of refusing it (module docstring)."""
    token = _REPAIR.set(enabled)
    try:
        yield
    finally:
        _REPAIR.reset(token)


class _RowProblem(Exception):
    """A JSON value fastnas never writes inside a row (NaN, a repeated key)."""


def _no_constant(name: str) -> Any:
    raise _RowProblem(f"holds {name}, which is not a number fastnas writes")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RowProblem(f"repeats the key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value: Any, shown: bool = True) -> str:
    """``a string "0"``, ``a number 2.0``, ``true``, ``an array`` (``shown=False``: without the value)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    kinds = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    kind = kinds.get(type(value), type(value).__name__)
    text = json.dumps(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}" if shown else kind


def _epochs(epochs: Sequence[int]) -> str:
    """``epoch 2`` / ``epochs 2, 3`` / ``epochs 2 to 9``."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if len(epochs) > 3 and list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]} to {epochs[-1]}"
    return "epochs " + ", ".join(map(str, epochs))


def _parse_row(
    raw: bytes, name: str, keys: frozenset[str] | None, counter: str | None
) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(row, what is wrong with it, whether it is not JSON at all) of one line of a history file."""
    if b"\0" in raw:
        return None, "holds zero bytes, its data never reached the disk", False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})", False
    if not text.strip():
        return None, "is empty (fastnas writes no empty line)", False
    try:
        row = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _RowProblem as exc:
        return None, str(exc), False
    except (ValueError, RecursionError) as exc:  # ValueError: also an int of more than 4,300 digits
        if isinstance(exc, json.JSONDecodeError):
            detail = exc.msg
        else:
            detail = str(exc).split(";")[0] if isinstance(exc, ValueError) else "nested too deeply"
        return None, f"not valid JSON ({detail})", True
    if not isinstance(row, dict):
        return None, f"holds {_json_kind(row, shown=False)}, not an object (a row)", False
    if "epoch" not in row:
        return None, 'has no "epoch"', False
    if not _whole(row["epoch"]):
        epoch = row["epoch"]
        return None, f'its "epoch" is {_json_kind(epoch)}, not a whole number', False
    unknown = sorted(set(row) - keys) if keys is not None else []
    if unknown:
        shown = ", ".join(map(repr, unknown[:3])) + (", ..." if len(unknown) > 3 else "")
        return None, f"has the key(s) {shown}, which fastnas does not write to {name}", False
    if counter is not None and not _whole(row.get(counter)):
        return None, f'its "{counter}" is {row.get(counter)!r:.40}, not a whole number', False
    return row, None, False


@dataclass
class _History:
    """What :func:`_scan_history` found in one history file, and what mending it takes."""

    path: Path
    kept: list[bytes] = field(default_factory=list)  # the lines of the rows kept (no newline)
    redone: int = 0  # complete rows of epochs after the checkpoint, dropped: they are redone
    torn: int | None = None  # characters of a torn last line past the checkpoint, dropped
    damaged: list[int] = field(default_factory=list)  # lines --repair-history drops
    missing: bool = False  # the file does not exist
    gaps: list[int] = field(default_factory=list)  # finished epochs now without a row (--repair-history)
    rewrite: bool = False


def _scan_history(
    path: Path,
    last_done: int,
    epoch_base: int,
    gaps: set[int],
    keys: frozenset[str] | None,
    repair: bool,
) -> _History:
    """Read and check one history file (module docstring); ``last_done``: the checkpoint's last finished
    epoch as the file numbers it (``epoch_base - 1`` without a checkpoint); ``gaps``: finished epochs an
    earlier ``--repair-history`` left without a row. Raises :class:`~fastnas.errors.DataError` for the
    first damage unless ``repair``."""
    found = _History(path)
    counter = _COUNTERS.get(path.name)

    def damage(line: int, problem: str) -> None:
        if not repair:
            raise DataError(f"{path}, line {line}: {problem}; {_REFUSED}")
        found.damaged.append(line)
        found.rewrite = True

    try:
        data = read_regular_bytes(path, history_bytes_bound(), bound="FASTNAS_MAX_HISTORY_BYTES")
    except FileNotFoundError:
        data, found.missing = b"", True
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    if data and not data.strip(b"\0"):
        damage(1, f"the file holds only zero bytes ({len(data):,}), its data never reached the disk")
        complete, tail = [], b""
    previous: tuple[int, int] | None = None  # (epoch, counter) of the last row taken
    epochs: set[int] = set()

    def place(row: dict[str, Any]) -> str | None:
        """What is wrong with where ``row`` stands (after ``previous``), if anything."""
        epoch, count = row["epoch"], row[counter] if counter else 0
        last = previous[0] if previous else epoch_base - 1
        if previous is not None and counter and epoch == last:
            if count > previous[1]:
                return None
            return f'its "{counter}" {count} does not follow {previous[1]} (a duplicated or out-of-order row)'
        if previous is None and epoch < epoch_base:
            return f"epoch {epoch} comes before the run's first epoch {epoch_base}"
        if epoch == last:
            return f"a second row of epoch {epoch} (a duplicated row)"
        if epoch < last:
            return f"epoch {epoch} comes after epoch {last} (rows out of order)"
        skipped = [e for e in range(last + 1, epoch) if e not in gaps]
        if skipped and not repair:  # repairing: the epochs of dropped rows become a gap
            return f"epoch {epoch} where epoch {skipped[0]} was expected (no row of {_epochs(skipped)})"
        return None

    def take(raw: bytes, row: dict[str, Any]) -> None:
        nonlocal previous
        previous = (row["epoch"], row[counter] if counter else 0)
        if row["epoch"] > last_done:
            found.redone += 1
            found.rewrite = True
        else:
            found.kept.append(raw)
            epochs.add(row["epoch"])

    for number, raw in enumerate(complete, start=1):
        row, problem, _ = _parse_row(raw, path.name, keys, counter)
        problem = problem or place(row)  # type: ignore[arg-type]
        if problem is not None:
            damage(number, problem)
        else:
            take(raw, row)  # type: ignore[arg-type]
    if tail:
        number = len(complete) + 1
        row, problem, not_json = _parse_row(tail, path.name, keys, counter)
        if not_json:  # the start of a row: an interrupted append, if it is that of the next epoch
            problem = _torn_problem(tail, previous, last_done, epoch_base, gaps, counter is not None)
            if problem is None:
                found.torn, found.rewrite = len(tail), True
        elif problem is None:
            problem = place(row)  # type: ignore[arg-type]
        if problem is not None:
            damage(number, problem)
        elif row is not None:  # a whole row without its newline: kept, the newline added
            take(tail, row)
            found.rewrite = True
    missing = [e for e in range(epoch_base, last_done + 1) if e not in gaps and e not in epochs]
    if missing and not repair:
        if found.missing:
            raise DataError(
                f"{path} is missing, but the checkpoint has finished {_epochs(missing)}; restore it, or "
                "resume with --repair-history to continue without those rows (a gap in the history)"
            )
        ends = f"after epoch {previous[0]}" if previous else "before its first row"
        raise DataError(
            f"{path}, line {len(complete) + 1}: no row of {_epochs(missing)}, which the checkpoint has "
            f"finished (the file ends {ends}); restore the file, or resume with --repair-history to "
            "continue without those rows (a gap in the history)"
        )
    found.gaps = missing
    return found


def _torn_problem(
    tail: bytes,
    previous: tuple[int, int] | None,
    last_done: int,
    epoch_base: int,
    gaps: set[int],
    several: bool,
) -> str | None:
    """What makes ``tail`` (a last line without newline that is not JSON) something else than the torn
    start of the row of an epoch past the checkpoint - the next epoch after the ``previous`` row (or that
    epoch itself, in a file of ``several`` rows an epoch) - if anything. Every row fastnas appends starts
    with ``{"epoch": N``."""
    what = f"ends in a partial line ({len(tail)} bytes, no newline)"
    if b"\0" in tail:
        return f"{what} holding zero bytes, its data never reached the disk"
    last = previous[0] if previous else epoch_base - 1
    following = last + 1
    while following in gaps:
        following += 1
    candidates = [last, following] if several and previous else [following]
    match = _TORN_ROW.fullmatch(tail)
    if match is None:
        if _ROW_START.startswith(tail):
            return None  # too short to say which epoch: the missing rows (if any) are named instead
        return f"{what} that is not the start of a row fastnas writes"
    digits, rest = match.group(1), match.group(2)
    if rest and not rest.startswith(b","):
        return f"{what} that is not the start of a row fastnas writes"
    fitting = [e for e in candidates if (e == int(digits) if rest else str(e).startswith(digits.decode()))]
    if not fitting:
        return f"{what} of epoch {digits.decode()}, where a row of epoch {following} would come next"
    if min(fitting) <= last_done:
        return f"{what} of epoch {min(fitting)}, which the checkpoint has finished (the file was cut)"
    return None


def _read_repairs(run_dir: Path) -> dict[str, list[int]]:
    """The gaps an earlier ``--repair-history`` recorded in ``repairs.json`` (none without the file)."""
    path = run_dir / REPAIRS_NAME
    if not os.path.lexists(path):
        return {}
    data = read_json_file(path, f"{path} does not exist")
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(_whole(e) for e in v) for v in data.values()
    ):
        raise DataError(
            f"{path} is damaged: it must map history file names to lists of epochs, as --repair-history "
            "writes it; restore it or delete it"
        )
    return data


def trim_histories(
    paths: Sequence[Path],
    start_epoch: int,
    log: Callable[[str], None],
    *,
    epoch_base: int,
    repair: bool | None = None,
) -> None:
    """Check the history files ``paths`` against the checkpoint and keep the rows of epochs before
    ``start_epoch`` (0-based: the number of finished epochs; the rows number epochs from ``epoch_base``).
    A kill may have written later rows, which the resumed run writes again, or torn the last line; both
    are dropped with a line in the log. Any other damage is refused with one line naming the file and the
    line, unless ``repair`` (default: inside :func:`repairing_histories`, i.e. ``--repair-history``)
    drops the damaged rows, recording the gap (module docstring). Call only after the checkpoint has been
    validated. Every file is read and checked before any is rewritten."""
    if not paths:
        return
    repair = _REPAIR.get() if repair is None else repair
    run_dir = paths[0].parent
    kind = "search" if any(p.name == "alphas.jsonl" for p in paths) else "train"
    last_done = start_epoch - 1 + epoch_base
    gaps = _read_repairs(run_dir)
    histories = [
        _scan_history(
            path,
            last_done,
            epoch_base,
            set(gaps.get(path.name, ())),
            HISTORY_KEYS[kind].get(path.name),
            repair,
        )
        for path in paths
    ]
    for found in histories:  # every file is checked: mend them
        path = found.path
        if found.torn is not None:
            log(f"{path}: dropping a torn last line ({found.torn} characters, an interrupted append)")
        if found.redone:
            log(f"{path.name}: dropping {found.redone} row(s) of epochs >= {start_epoch + 1} (redone now)")
        if found.damaged or found.gaps:
            dropped = (
                f"dropped {len(found.damaged)} damaged line(s) (line {', '.join(map(str, found.damaged))})"
                if found.damaged
                else "found the file missing"
                if found.missing
                else "dropped nothing"
            )
            gap = (
                f"; {_epochs(found.gaps)} of the finished epochs now have no row - a gap in the history, "
                f"recorded in {REPAIRS_NAME}"
                if found.gaps
                else ""
            )
            log(f"{path.name}: --repair-history {dropped}{gap}")
        if found.rewrite:
            atomic_write(path, b"".join(line + b"\n" for line in found.kept))
    new_gaps = {found.path.name: found.gaps for found in histories if found.gaps}
    if new_gaps:
        merged = {**gaps}
        for name, epochs in new_gaps.items():
            merged[name] = sorted({*merged.get(name, []), *epochs})
        atomic_write_json(run_dir / REPAIRS_NAME, merged)


class NonFiniteMonitor:
    """Finds the first step whose loss is NaN or infinite, per level, without a host sync per step:
    :meth:`observe` records on the device, :meth:`check` (one sync) raises
    :class:`~fastnas.errors.NonFiniteError` naming the epoch, the step and the level."""

    def __init__(self, device: torch.device, levels: Sequence[str]) -> None:
        self.device = device
        self.first_bad = {level: torch.full((), -1, device=device, dtype=torch.long) for level in levels}
        self.value = {level: torch.zeros((), device=device) for level in levels}

    def reset(self) -> None:
        for level in self.first_bad:
            self.first_bad[level].fill_(-1)

    def observe(self, level: str, step: int, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad[level] < 0)
        self.first_bad[level] = torch.where(
            bad, torch.full_like(self.first_bad[level], step), self.first_bad[level]
        )
        self.value[level] = torch.where(bad, loss.detach().float(), self.value[level])

    def check(self, epoch: int, what: str = "loss") -> None:
        """Raise for the level that went bad at the earliest step (at the same step, the one listed
        first in ``levels``: list them in the order a step runs them)."""
        bad = [(int(first), index, level) for index, (level, first) in enumerate(self.first_bad.items())]
        bad = [entry for entry in bad if entry[0] >= 0]
        if not bad:
            return
        step, _, level = min(bad)
        value = float(self.value[level])
        kind = "NaN" if math.isnan(value) else "infinite"
        raise NonFiniteError(
            f"the {level} {what} became {kind} at epoch {epoch + 1}, step {step + 1}; the run "
            "stopped and keeps its last good checkpoint - lower the learning rate(s) or use "
            "--precision fp32, then resume with --resume"
        )


def require_keys(state: Mapping[str, Any], keys: Sequence[str], path: Path) -> None:
    """A nested part of a checkpoint must hold ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it was not written by this version of fastnas")
