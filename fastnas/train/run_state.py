"""What search and retraining runs share: the run directory, its log, its history files, the divergence
check and the resume protocol.

Resume protocol (:func:`open_checkpoint`): the checkpoint is verified (checksum), loaded without
running any code, checked key by key and range-checked *before* anything in the run directory is
rewritten; only then are the history files trimmed to the checkpoint's epoch. If the newest checkpoint
fails verification, the previous one is used with a logged warning.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastnas.errors import CheckpointError, ConfigError, NonFiniteError, RunExistsError
from fastnas.fileio import append_text, read_jsonl, remove_stale_temporaries, rewrite_jsonl
from fastnas.train.checkpoint import (
    CHECKPOINT_NAME,
    LoadedCheckpoint,
    check_epoch,
    check_state,
    has_checkpoint,
    load_checkpoint,
    previous_checkpoint_path,
)

__all__ = [
    "RUN_FILES",
    "NonFiniteMonitor",
    "RunLog",
    "check_run_dir_free",
    "open_checkpoint",
    "prepare_run_dir",
    "trim_histories",
]


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
) -> LoadedCheckpoint | None:
    """The run's newest good checkpoint, verified and checked against ``schema`` and ``epochs`` (its
    ``epoch`` must lie in [0, epochs)), or None when the run has none yet. With ``clean`` (the process
    that writes the run: rank 0 under torchrun) stale temporary files that a kill left behind are removed
    first."""
    if clean:
        for tmp in remove_stale_temporaries(run_dir, names=(*RUN_FILES, *_CHECKPOINT_FILES)):
            log(f"removed {tmp.name}, a temporary file left by an interrupted write")
    path = run_dir / CHECKPOINT_NAME
    if not has_checkpoint(path):
        return None
    loaded = load_checkpoint(path, map_location=map_location, warn=log)
    check_state(loaded.state, schema, loaded.path)
    check_epoch(loaded.state["epoch"], epochs, loaded.path)
    return loaded


def trim_histories(paths: Sequence[Path], start_epoch: int, log: Callable[[str], None]) -> None:
    """Keep the rows of epochs before ``start_epoch`` (a crash may have written later ones, which the
    resumed run writes again). Call only after the checkpoint has been validated. Every file is read
    (and a damaged one refused) before any is rewritten; a torn last line is dropped with a logged
    warning."""
    histories = [(path, _read_history(path, log)) for path in paths]
    for path, rows in histories:
        kept = [
            r
            for r in rows
            if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] < start_epoch
        ]
        if len(kept) != len(rows) or (path.exists() and not path.read_bytes().endswith(b"\n")):
            if len(kept) != len(rows):
                log(
                    f"{path.name}: dropping {len(rows) - len(kept)} row(s) of epochs >= {start_epoch + 1} "
                    "(redone now)"
                )
            rewrite_jsonl(path, kept)


def _read_history(path: Path, log: Callable[[str], None]) -> list[Any]:
    """:func:`~fastnas.fileio.read_jsonl`, its warning (a torn last line) going to the run log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = read_jsonl(path)
    for warning in caught:
        log(str(warning.message))
    return rows


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
