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
- :func:`check_state` / :func:`check_epoch` check that a loaded state fits the run it should continue;
  :func:`restoring` / :func:`load_states` put it into the run's objects (model, optimisers, schedulers,
  loss scalers), a state that does not fit them being a :class:`~fastnas.errors.CheckpointError`.

Binding a checkpoint to its run: a run gets a random ``run_id`` when it starts, written into its
``config.json`` and, with every resolved setting, into each checkpoint (``state["config"]``). Resuming or
evaluating compares them first (:func:`check_run_binding`): a checkpoint of another run (another id) or a
``config.json`` edited after the run started (another value of a setting) is a
:class:`~fastnas.errors.CheckpointError` naming what differs; the checkpoint's record wins, so the fix is
to put the setting back or start a new run. Only the settings that say where things are and cannot change
a result (:data:`LOCATION_SETTINGS`: the run and data folders, worker processes, device, TensorBoard) may
change, with a logged note. A ``config.json`` holding a key twice is refused (:func:`read_run_config`).
Checkpoints of earlier fastnas versions carry no run id (and search checkpoints no settings): they are
accepted with a logged note, since those versions could not write them, and only what they do record is
compared; a run whose ``config.json`` has a run id, though, only accepts checkpoints carrying the same id.

Loaded state is validated too (:func:`check_finite`): every floating-point tensor and number must be finite
(weights, BatchNorm running statistics, optimiser moments, the loss scale), and the runs check their
counters (the learning-rate schedule's ``last_epoch``). Runs check their state the same way *before*
writing a checkpoint (:func:`find_non_finite`), so a checkpoint always holds a finite state and a run that
diverged keeps its last good one.

States hold only dicts, lists, tuples, str, int, float, bool, None and tensors; store the NumPy random
state through :func:`numpy_rng_state` / :func:`set_numpy_rng_state`. A kill leaves a
``.checkpoint.pt.*.tmp`` file behind: :func:`fastnas.fileio.remove_stale_temporaries` deletes it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fastnas.errors import CheckpointError, ConfigError, NonFiniteError
from fastnas.fileio import (
    atomic_write,
    json_bytes_bound,
    max_checkpoint_bytes,
    read_json_file,
    read_regular_bytes,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LOCATION_SETTINGS",
    "LoadedCheckpoint",
    "NonFinite",
    "check_counters",
    "check_epoch",
    "check_finite",
    "check_run_binding",
    "check_state",
    "find_non_finite",
    "has_checkpoint",
    "load_checkpoint",
    "load_states",
    "new_run_id",
    "non_finite_state_error",
    "numpy_rng_state",
    "previous_checkpoint_path",
    "read_run_config",
    "restoring",
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
    try:  # a regular file still (not swapped for a FIFO or a device), of a size fastnas can load
        bound = "FASTNAS_MAX_CHECKPOINT_BYTES"
        data = read_regular_bytes(path, max_checkpoint_bytes(), error=CheckpointError, bound=bound)
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


def check_epoch(epoch: Any, epochs: int, path: str | os.PathLike[str], epoch_base: int = 0) -> None:
    """Check that the checkpoint's last finished ``epoch`` is an int in ``[epoch_base, epochs +
    epoch_base)`` (``epoch_base``: the number the run gives its first epoch, 1 in runs of this version)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise CheckpointError(
            f"checkpoint {path}: 'epoch' should be int but is {type(epoch).__name__}; start the run again"
        )
    if not epoch_base <= epoch < epochs + epoch_base:
        raise CheckpointError(
            f"checkpoint {path} records epoch {epoch}, outside {epoch_base} to "
            f"{epochs - 1 + epoch_base} for this run's {epochs} epochs; it belongs to a run with other "
            "settings - resume with the run's own config or start the run again"
        )


# ------------------------------------------------------------------------------------ numpy random
@contextlib.contextmanager
def restoring(path: str | os.PathLike[str] | None, objects: str) -> Iterator[None]:
    """Turn the errors of putting a loaded state into the run's ``objects`` (e.g. "model and
    optimisers") into a :class:`~fastnas.errors.CheckpointError` naming ``path``: the checkpoint belongs to
    another configuration."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{path or 'the checkpoint'} does not fit this run's {objects} ({type(exc).__name__}: "
            f"{str(exc)[:300]}); it belongs to another configuration - start the run again"
        ) from None


def load_states(
    state: Mapping[str, Any],
    parts: Mapping[str, Any],
    path: str | os.PathLike[str] | None,
    objects: str,
) -> None:
    """``parts[key].load_state_dict(state[key])`` for each key of ``parts``, inside :func:`restoring`."""
    with restoring(path, objects):
        for key, part in parts.items():
            part.load_state_dict(state[key])


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


# ------------------------------------------------------------------------------ binding to the run
LOCATION_SETTINGS = frozenset(
    {"out_dir", "run_name", "data_dir", "download", "workers", "device", "tensorboard"}
)
"""Settings that say where a run's files and data are, or how it is watched, never what it computes: they
may differ between a checkpoint and ``config.json`` (a moved run directory or dataset, another machine);
the run logs a note and uses ``config.json``'s value."""


def new_run_id() -> str:
    """A fresh random run id (32 hex digits), written into a new run's ``config.json`` and checkpoints."""
    return uuid.uuid4().hex


def read_run_config(path: Path, missing: str) -> Any:
    """The JSON content of a run's ``config.json`` (``missing``: the message when there is none), read like
    :func:`fastnas.fileio.read_json_file` but refusing a key given twice in one object: plain JSON keeps
    the last value silently, so an edit that added a second ``"epochs"`` would quietly win."""
    data = read_json_file(path, missing)  # a missing, unreadable or malformed file: its own clear error

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(
                    f"{path} gives the key {key!r} twice in one object ({_show(out[key])} and "
                    f"{_show(value)}); JSON would silently keep the last one - delete the one the run was "
                    "not started with"
                )
            out[key] = value
        return out

    try:
        raw = read_regular_bytes(path, json_bytes_bound(), error=ConfigError, bound="FASTNAS_MAX_JSON_BYTES")
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=unique)
    except ConfigError:
        raise
    except (OSError, ValueError, RecursionError):  # changed since it was read above
        return data


def _show(value: Any) -> str:
    """A setting's value as ``config.json`` writes it, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _setting_values(settings: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """``{key: (label, value)}`` of a run's settings, method and supernet options one by one (the flat
    ``executor``, ``partial_k``, ``partial_bypass`` of an earlier ``config.json`` as supernet options)."""
    out: dict[str, tuple[str, Any]] = {}
    for key, value in settings.items():
        if key in ("method_options", "supernet_options") and isinstance(value, Mapping):
            kind = key.split("_")[0]
            for name, option in value.items():
                out[f"{key}.{name}"] = (f"{kind} option {name!r}", option)
        elif key in _FLAT_SUPERNET_KEYS:
            out[f"supernet_options.{key}"] = (f"supernet option {key!r}", value)
        else:
            out[key] = (repr(key), value)
    return out


#: settings of an earlier ``config.json`` that are supernet options now
_FLAT_SUPERNET_KEYS = ("executor", "partial_k", "partial_bypass")


_ABSENT = object()


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """``(key, label, recorded value, current value)`` of every setting that differs (run id aside)."""
    old, new = _setting_values(recorded), _setting_values(current)
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key == "run_id":
            continue
        label, before = old.get(key, (new.get(key, ("", None))[0], _ABSENT))
        after = new.get(key, (label, _ABSENT))[1]
        if before is _ABSENT or after is _ABSENT or before != after:
            out.append((key, label, before, after))
    return out


def _value(value: Any) -> str:
    return "absent" if value is _ABSENT else _show(value)


def _delete_advice(path: Path, what: str = "start the run again") -> str:
    prev = previous_checkpoint_path(path)
    if path.name.endswith(f".prev{path.suffix}") or not prev.exists():
        return what
    return f"delete it to continue from the previous checkpoint {prev.name}, or {what}"


def check_run_binding(
    path: Path,
    recorded: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    config_path: Path,
    log: Callable[[str], None],
    *,
    recorded_run_id: str | None,
    advice: str = "start the run again",
) -> None:
    """Check that the checkpoint at ``path`` belongs to the run whose ``config.json`` (``config_path``)
    gives the settings ``current``; ``recorded`` are the settings the checkpoint was written with (both
    as the resolved config's ``to_json``; None: a checkpoint of an earlier fastnas that records none) and
    ``recorded_run_id`` its run id (None: it records none).

    Another run id is a :class:`~fastnas.errors.CheckpointError` saying which settings differ too; the
    same run id with other settings means ``config.json`` was edited: the error names each setting, with
    both values. :data:`LOCATION_SETTINGS` may differ (a note goes to ``log``), and so may everything
    when neither the checkpoint nor ``config.json`` has a run id (a run of an earlier fastnas: a note)."""
    run_id = current.get("run_id") or ""
    if recorded is None:
        if run_id:
            raise CheckpointError(
                f"checkpoint {path} records neither a run id nor the run's settings, but this run "
                f"({config_path}: run id {run_id}) writes both into every checkpoint, so it is not this "
                f"run's checkpoint - put the run's own checkpoint back, or {advice}"
            )
        log(
            f"note: checkpoint {path} was written by an earlier fastnas, which recorded neither a run id "
            f"nor the run's settings; it is used as it is, without checking it against {config_path.name}"
        )
        return
    differences = _differences(recorded, current)
    changed = [d for d in differences if d[0] not in LOCATION_SETTINGS]
    if (recorded_run_id or "") != run_id or (recorded_run_id is None and run_id):
        if changed:
            what = "its settings differ: " + ", ".join(
                f"{label} {_value(before)} (this run: {_value(after)})" for _, label, before, after in changed
            )
        else:
            what = "its settings are the same as this run's"
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: its run id is "
            f"{recorded_run_id or 'none (a run of an earlier fastnas)'}, this run's ({config_path}) is "
            f"{run_id or 'none'}, and {what} - put this run's own checkpoint back, or {advice}"
        )
    if recorded_run_id is None:
        log(
            f"note: checkpoint {path} was written by an earlier fastnas, which recorded no run id; only its "
            f"settings are checked against {config_path.name}"
        )
    if changed:
        what = "; ".join(
            f"{label} is {_value(after)} in {config_path.name} but {_value(before)} in the checkpoint"
            for _, label, before, after in changed
        )
        raise CheckpointError(
            f"{config_path} was changed after checkpoint {path.name} was written: {what}; the checkpoint's "
            f"record of the run wins - put the setting(s) back in {config_path.name}, or start a new run "
            "to change them"
        )
    for key, label, before, after in differences:
        if key in LOCATION_SETTINGS:
            log(
                f"note: {config_path.name} changes {label} from {_value(before)} to {_value(after)} since "
                f"checkpoint {path.name} was written; it says where things are, not what the run computes, "
                "so the new value is used"
            )


# ------------------------------------------------------------------------------------- finite state
@dataclass(frozen=True)
class NonFinite:
    """The first tensor or number of a state that is not finite (:func:`find_non_finite`)."""

    name: str  # where it is in the state: model['cells.0.ops.2.bn.running_var']
    nan: int  # how many of its values are NaN
    inf: int  # how many are infinite
    size: int  # how many values it has
    others: int  # how many further tensors or numbers of the state are not finite

    def __str__(self) -> str:
        if self.size == 1:
            held = "is NaN" if self.nan else "is infinite"
        else:
            counts = [f"{self.nan:,} NaN" if self.nan else "", f"{self.inf:,} infinite" if self.inf else ""]
            held = f"holds {' and '.join(c for c in counts if c)} of its {self.size:,} values"
        more = f" (and {self.others:,} more tensor(s) or number(s) are not finite)" if self.others else ""
        return f"{self.name} {held}{more}"


def _leaves(value: Any, name: str, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            out.append((name, value))
    elif isinstance(value, float):
        out.append((name, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _leaves(item, f"{name}[{key!r}]" if name else str(key), out)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _leaves(item, f"{name}[{index}]", out)


def find_non_finite(state: Any) -> NonFinite | None:
    """The first floating-point tensor or number of ``state`` (nested dicts, lists, tuples) holding a NaN
    or an infinity, or None when every one is finite. One host sync per device the tensors are on."""
    leaves: list[tuple[str, Any]] = []
    _leaves(state, "", leaves)
    bad: list[int] = []
    by_device: dict[torch.device, list[int]] = {}
    for index, (_, value) in enumerate(leaves):
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(index)
        elif not math.isfinite(value):
            bad.append(index)
    for indices in by_device.values():
        finite = torch.stack([torch.isfinite(leaves[i][1]).all() for i in indices]).cpu()
        bad.extend(i for i, ok in zip(indices, finite.tolist(), strict=True) if not ok)
    if not bad:
        return None
    name, value = leaves[min(bad)]
    if isinstance(value, torch.Tensor):
        nan, inf, size = int(torch.isnan(value).sum()), int(torch.isinf(value).sum()), value.numel()
    else:
        nan, inf, size = int(math.isnan(value)), int(math.isinf(value)), 1
    return NonFinite(name, nan, inf, size, len(bad) - 1)


def check_finite(state: Mapping[str, Any], path: Path, advice: str | None = None) -> None:
    """A loaded checkpoint must hold finite values only (weights, BatchNorm statistics, optimiser state):
    :class:`~fastnas.errors.CheckpointError` naming the first tensor that does not."""
    bad = find_non_finite(state)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} holds a non-finite state: {bad}; the run had diverged when it was written, "
            f"or the file was changed - {advice or _delete_advice(path)}"
        )


def check_counters(
    state: Mapping[str, Any],
    path: Path,
    *,
    epoch: int,
    schedules: Mapping[str, int],
    scalers: tuple[str, ...] = (),
    advice: str | None = None,
) -> None:
    """The counters of a loaded checkpoint must fit its ``epoch`` (the last finished one, from 1):
    ``schedules`` maps the key of each learning-rate scheduler state to the steps it must have taken
    (its ``last_epoch``); the GradScaler states under ``scalers`` need a positive loss scale."""
    for key, steps in schedules.items():
        scheduler = state.get(key)
        last = scheduler.get("last_epoch") if isinstance(scheduler, Mapping) else None
        if isinstance(last, bool) or not isinstance(last, int) or last != steps:
            raise CheckpointError(
                f"checkpoint {path}: {key}.last_epoch is {last!r}, but after epoch {epoch} its "
                f"learning-rate schedule has taken {steps} step(s); the file was changed or belongs to "
                f"another run - {advice or _delete_advice(path)}"
            )
    for key in scalers:
        scaler = state.get(key)
        scale = scaler.get("scale") if isinstance(scaler, Mapping) else None
        if scale is not None and (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float, torch.Tensor))
            or not float(scale) > 0
        ):
            raise CheckpointError(
                f"checkpoint {path}: {key}.scale is {scale!r}, not a positive loss scale; the file was "
                f"changed - {advice or _delete_advice(path)}"
            )


def non_finite_state_error(bad: NonFinite | None, epoch: int) -> NonFiniteError:
    """The error of a run whose state after ``epoch`` (from 1) is not finite, so that its checkpoint is
    not written (``bad`` None: the state of another process is not)."""
    what = str(bad) if bad is not None else "the state of another process is not finite"
    return NonFiniteError(
        f"after epoch {epoch} the run's state is not finite: {what}; the run stopped without writing "
        f"epoch {epoch}'s checkpoint or history and keeps its last good checkpoint - start a new run with "
        "lower learning rate(s) or --precision fp32 (resuming repeats the same steps)"
    )
