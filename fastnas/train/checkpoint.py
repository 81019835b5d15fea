"""Checkpoints that are verified before anything in them is unpickled, with a previous one to fall back to.

File format: the bytes of ``torch.save(state)`` followed by one trailer line ::

    b"\\nFASTNAS-CHECKPOINT v1 sha256=<64 hex digits of the payload> size=<payload bytes>\\n"

``torch.load(path, weights_only=True)`` still reads such a file (a zip reader ignores trailing bytes).

- :func:`save_checkpoint` writes through :func:`fastnas.fileio.atomic_write`. When the new file is
  complete and synced, an existing checkpoint that verifies is renamed to ``<stem>.prev<suffix>``
  (``checkpoint.prev.pt``), then the new file takes its place. A kill at any moment leaves at least one
  good checkpoint: the old one, or only the previous one (between the two renames), or both.
- :func:`load_checkpoint` verifies size and SHA-256, then loads with ``weights_only=True``; if the newest
  checkpoint is missing or unusable, it continues from the previous one with a warning.
- :func:`check_state` / :func:`check_epoch` check that a loaded state fits the run it should continue.

States hold only dicts, lists, tuples, str, int, float, bool, None and tensors; store the NumPy random
state through :func:`numpy_rng_state` / :func:`set_numpy_rng_state`. A kill leaves a
``.checkpoint.pt.*.tmp`` file behind: :func:`fastnas.fileio.remove_stale_temporaries` deletes it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fastnas.errors import CheckpointError
from fastnas.fileio import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "LoadedCheckpoint",
    "check_epoch",
    "check_state",
    "has_checkpoint",
    "load_checkpoint",
    "numpy_rng_state",
    "previous_checkpoint_path",
    "save_checkpoint",
    "set_numpy_rng_state",
    "verify_checkpoint",
]

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
"""File name of a run's newest checkpoint; the previous good one is ``checkpoint.prev.pt``."""
_MAGIC = b"\nFASTNAS-CHECKPOINT "
_TRAILER = re.compile(rb"\nFASTNAS-CHECKPOINT v1 sha256=([0-9a-f]{64}) size=([0-9]+)\n")
_ANY_VERSION = re.compile(rb"\nFASTNAS-CHECKPOINT v([0-9]+) ")
_ZIP_MAGIC = b"PK\x03\x04"  # how every torch.save archive starts
_TRAILER_MAX = 160  # bytes at the end of the file searched for the trailer (the v1 trailer is < 120)

_PLAIN_SCALARS = (str, int, float, bool, type(None))
_PLAIN_MAPPINGS = (dict, collections.OrderedDict)
_PLAIN_SEQUENCES = (list, tuple, torch.Size)


def previous_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The previous good checkpoint kept next to ``path``: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def has_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` or its previous checkpoint exists (a kill between the renames leaves only that)."""
    return Path(path).exists() or previous_checkpoint_path(path).exists()


# ------------------------------------------------------------------------------------------- writing
def _trailer(payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    return f"\nFASTNAS-CHECKPOINT v{FORMAT_VERSION} sha256={digest} size={len(payload)}\n".encode("ascii")


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` for anything ``torch.load(weights_only=True)`` would refuse to read back."""
    kind = type(value)
    if kind in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if kind in _PLAIN_MAPPINGS:
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                raise TypeError(f"checkpoint state {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in _PLAIN_SEQUENCES:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    hint = "; store np.random.get_state() through numpy_rng_state()" if kind.__module__ == "numpy" else ""
    raise TypeError(
        f"checkpoint state {where} is a {kind.__module__}.{kind.__qualname__}; checkpoints hold only dicts, "
        f"lists, tuples, str, int, float, bool, None and tensors{hint}"
    )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plain types and tensors only) to ``path`` with a checksum trailer, atomically.

    A checkpoint already at ``path`` that verifies becomes the previous one (``<stem>.prev<suffix>``); one
    that does not verify is simply replaced, so it never displaces a good previous checkpoint. A disk
    that fills up while the new file is written raises :class:`~fastnas.errors.DiskFullError` and leaves
    both existing files as they were. Returns ``path``.
    """
    if type(state) not in _PLAIN_MAPPINGS:
        raise TypeError(f"a checkpoint state must be a dict, not {type(state).__name__}")
    _check_plain(state, "state")
    target = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    data = payload + _trailer(payload)

    def write_then_rotate(handle: IO[bytes]) -> None:
        # atomic_write renames the temporary file onto ``target`` right after this returns; the old
        # checkpoint moves aside only once the new one is complete on disk.
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        if target.is_file():
            try:
                _verified_payload(target)
            except CheckpointError:
                return  # damaged: let the new file replace it, keep the previous one
            os.replace(target, previous_checkpoint_path(target))

    return atomic_write(target, write_then_rotate)


# --------------------------------------------------------------------------------------- verifying
def _advice(path: Path) -> str:
    prev = previous_checkpoint_path(path)
    if path.name.endswith(f".prev{path.suffix}") or not prev.exists():
        return "start the run again"
    return (
        f"resume from the previous checkpoint {prev.name} (resuming the run does that) or start the run again"
    )


def _verified_payload(path: Path) -> bytes:
    """The payload of ``path``; ``CheckpointError`` says what is wrong (without advice)."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    bad = f"checkpoint {path} is damaged"
    if not data:
        raise CheckpointError(f"{bad}: it is empty (0 bytes), its write never completed")
    start = data.rfind(_MAGIC, max(0, len(data) - _TRAILER_MAX))
    if start < 0:
        if not data.strip(b"\0"):
            raise CheckpointError(
                f"{bad}: it holds only zero bytes ({len(data):,}), its data never reached the disk"
            )
        raise CheckpointError(
            f"{bad}: it has no fastnas checkpoint trailer, so it was truncated or was not written by this "
            "version of fastnas"
        )
    trailer = _TRAILER.fullmatch(data, start)
    if trailer is None:
        version = _ANY_VERSION.match(data, start)
        if version is not None and int(version.group(1)) > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format v{int(version.group(1))}, written by a newer fastnas "
                f"(this one reads v{FORMAT_VERSION}); upgrade fastnas to resume it"
            )
        raise CheckpointError(
            f"{bad}: its trailer line is garbled, so it was truncated, overwritten or not written by this "
            "version of fastnas"
        )
    payload = data[:start]
    size = int(trailer.group(2))
    if size != len(payload):
        raise CheckpointError(
            f"{bad}: it holds {len(payload):,} bytes of data but its trailer records {size:,}, so part of it "
            "is missing or was added"
        )
    if hashlib.sha256(payload).hexdigest() != trailer.group(1).decode("ascii"):
        raise CheckpointError(
            f"{bad}: its SHA-256 checksum does not match, so its bytes changed after it was written"
        )
    return payload


def verify_checkpoint(path: str | os.PathLike[str]) -> bytes:
    """Check size and checksum of the checkpoint at ``path`` and return its payload (``torch.save`` bytes).

    Raises :class:`~fastnas.errors.CheckpointError` naming the file, the problem and what to do.
    """
    path = Path(path)
    try:
        return _verified_payload(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_advice(path)}") from None


# ----------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedCheckpoint:
    """A loaded checkpoint: its ``state``, the file it came from, and whether that was the previous one."""

    state: dict[str, Any]
    path: Path
    fell_back: bool


class _UnsafeCheckpointError(CheckpointError):
    """A checkpoint with a valid checksum holding objects fastnas never writes: someone made or altered
    it on purpose, so the run stops instead of quietly continuing from the previous checkpoint."""


def _load_one(path: Path, map_location: str | torch.device | None) -> dict[str, Any]:
    payload = _verified_payload(path)
    unreadable = f"checkpoint {path} passes its checksum but torch cannot read it"
    if not payload.startswith(_ZIP_MAGIC):  # torch.load would try the legacy pickle format
        raise CheckpointError(f"{unreadable}: its data is not a torch.save archive")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CheckpointError(f"{unreadable} (the data inside is damaged)") from None
        raise _UnsafeCheckpointError(
            f"checkpoint {path} contains objects fastnas does not write (its checksum is valid, so it was "
            "made or altered on purpose); it may be malicious and was not loaded"
        ) from None
    except Exception as exc:  # torch reports unreadable archives with assorted exception types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        raise CheckpointError(f"{unreadable} ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not the dict of run state fastnas writes"
        )
    return state


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    *,
    fallback: bool = True,
    warn: Callable[[str], None] | None = None,
) -> LoadedCheckpoint:
    """Verify, then load the checkpoint at ``path`` with ``weights_only=True``.

    With ``fallback``, a missing or unusable newest checkpoint gives way to a previous one that loads;
    ``warn`` (default :func:`warnings.warn`) then gets one line saying what failed and why. Raises
    :class:`~fastnas.errors.CheckpointError` when no checkpoint can be used.
    """
    path = Path(path)
    try:
        return LoadedCheckpoint(_load_one(path, map_location), path, fell_back=False)
    except CheckpointError as exc:
        newest = exc
    prev = previous_checkpoint_path(path)
    if isinstance(newest, _UnsafeCheckpointError):
        raise CheckpointError(
            f"{newest}; check who changed the run directory, then delete {path.name} to continue from "
            "the previous checkpoint, or start the run again"
            if prev.exists()
            else f"{newest}; start the run again"
        ) from None
    if not fallback:
        raise CheckpointError(f"{newest}; {_advice(path)}")
    if not prev.exists():
        raise CheckpointError(
            f"{newest}; there is no previous checkpoint {prev.name}, so start the run again"
        )
    try:
        state = _load_one(prev, map_location)
    except CheckpointError as older:
        raise CheckpointError(
            f"{newest}; the previous checkpoint cannot be used either: {older}; start the run again"
        ) from None
    message = f"{newest}; the run continues from the previous checkpoint {prev} (at most one epoch earlier)"
    if warn is None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    else:
        warn(message)
    return LoadedCheckpoint(state, prev, fell_back=True)


# ---------------------------------------------------------------------------------------- checking
def _type_names(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(kind.__name__ for kind in kinds)


def _has_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # bool subclasses int, but a flag is not a count
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def check_state(
    state: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]], path: str | os.PathLike[str]
) -> None:
    """Check that ``state`` has every key of ``schema`` with a value of its type.

    ``bool`` never passes for ``int``; an ``int`` passes for ``float``. Raises
    :class:`~fastnas.errors.CheckpointError` naming the file, the key and both types.
    """
    unfit = "it does not fit this version of fastnas; start the run again"
    for key, expected in schema.items():
        if key not in state:
            held = ", ".join(sorted(map(str, state))) or "nothing"
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry (it holds: {held}); {unfit}")
        value = state[key]
        if not _has_type(value, expected):
            raise CheckpointError(
                f"checkpoint {path}: '{key}' should be {_type_names(expected)} but is "
                f"{type(value).__name__}; {unfit}"
            )


def check_epoch(epoch: Any, epochs: int, path: str | os.PathLike[str]) -> None:
    """Check that the checkpoint's last finished ``epoch`` is an int in ``[0, epochs)``."""
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise CheckpointError(
            f"checkpoint {path}: 'epoch' should be int but is {type(epoch).__name__}; start the run again"
        )
    if not 0 <= epoch < epochs:
        raise CheckpointError(
            f"checkpoint {path} records epoch {epoch}, outside 0 to {epochs - 1} for this run's {epochs} "
            "epochs; it belongs to a run with other settings - resume with the run's own config or start "
            "the run again"
        )


# ------------------------------------------------------------------------------------ numpy random
def numpy_rng_state() -> dict[str, Any]:
    """NumPy's global random state (``np.random.get_state()``) as plain types a checkpoint can hold."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "kind": str(kind),
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def set_numpy_rng_state(state: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> None:
    """Restore NumPy's global random state from :func:`numpy_rng_state` output."""
    where = f"checkpoint {path}" if path is not None else "the checkpoint"
    try:
        np.random.set_state(
            (
                state["kind"],
                np.asarray(state["keys"], dtype=np.uint32),
                int(state["pos"]),
                int(state["has_gauss"]),
                float(state["cached_gaussian"]),
            )
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(
            f"{where} holds an unusable NumPy random state ({type(exc).__name__}: {exc}); start the run again"
        ) from None
