"""Writing run files so that a crash, a kill or a full disk never leaves a half-written one.

- :func:`atomic_write` writes through a temporary file in the same folder, ``fsync`` and ``os.replace``:
  readers see the old file or the new one, never a mix. A full disk raises
  :class:`~fastnas.errors.DiskFullError` naming the file and the space it needed; the old file stays.
- :func:`append_jsonl` appends one whole line per call (one ``write`` on an ``O_APPEND`` descriptor,
  then ``fsync``); :func:`read_jsonl` drops a torn last line (a kill in the middle of an append) with
  a warning, and names the file and line of any other damage.
- :func:`remove_stale_temporaries` deletes the temporary files a kill left behind.

Pure Python (no torch), so every layer can use it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

from fastnas.errors import DataError, DiskFullError

__all__ = [
    "append_jsonl",
    "append_text",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "read_jsonl",
    "remove_stale_temporaries",
    "rewrite_jsonl",
]

_TMP_SUFFIX = ".tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_FILE_MODE = 0o644


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(path: Path, needed: int | None, exc: OSError) -> DiskFullError:
    free = _free_bytes(path.parent)
    need = f"about {needed:,} bytes" if needed else "more space"
    have = f"{free:,} bytes free" if free is not None else "free space unknown"
    return DiskFullError(
        exc.errno,
        f"no space left to write {path} ({need} needed, {have} on that file system); free some space "
        "and resume the run (the last complete checkpoint is intact)",
    )


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | os.PathLike[str], write: bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``write`` (bytes, or a function filling a binary handle) to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = len(write) if isinstance(write, bytes) else None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=_TMP_SUFFIX, dir=target.parent)
    except OSError as exc:  # a full disk can refuse even the empty temporary file
        if exc.errno in _NO_SPACE:
            raise _disk_full(target, size, exc) from None
        raise
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes owner-only files; run files are ordinary ones
        with os.fdopen(fd, "wb") as handle:
            if isinstance(write, bytes):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in _NO_SPACE:
            raise _disk_full(target, size, exc) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def remove_stale_temporaries(
    folder: str | os.PathLike[str], names: Collection[str] | None = None
) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted :func:`atomic_write` left in ``folder`` (only
    those of the file names in ``names``, when given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in sorted(folder.glob(f".*{_TMP_SUFFIX}")):
        target = tmp.name[1:].removesuffix(_TMP_SUFFIX).rsplit(".", 1)[0]  # .NAME.abc123.tmp -> NAME
        if tmp.is_file() and (names is None or target in names):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def append_jsonl(path: str | os.PathLike[str], row: Any) -> None:
    """Append ``row`` as one JSON line: a single write on an append-only descriptor, then ``fsync``."""
    append_text(path, json.dumps(row) + "\n")


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` in one write on an append-only descriptor, then ``fsync`` (a full disk is a
    :class:`~fastnas.errors.DiskFullError` naming the file)."""
    target = Path(path)
    data = text.encode("utf-8")
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a short write only happens when the disk is full
            raise OSError(errno.ENOSPC, "short write")
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _disk_full(target, len(data), exc) from None
        raise
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Rows of a JSON-lines file (``[]`` if it does not exist).

    A last line without its newline that does not parse is the trace of an interrupted append: it is
    dropped with a warning. Any other line that does not parse is damage: :class:`DataError` names the
    file and the line.
    """
    target = Path(path)
    if not target.exists():
        return []
    try:
        text = target.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{target} is not a UTF-8 JSON-lines file ({exc.reason} at byte {exc.start})"
        ) from None
    lines = text.split("\n")
    torn = lines[-1] if lines[-1].strip() else None  # text after the last newline
    rows = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{target}, line {number}: not valid JSON ({exc.msg}); the history file is damaged - "
                "repair or delete that line"
            ) from None
    if torn is not None:
        try:
            rows.append(json.loads(torn))
        except json.JSONDecodeError:
            warnings.warn(
                f"{target}: dropping a torn last line ({len(torn)} characters, an interrupted append)",
                stacklevel=2,
            )
    return rows


def rewrite_jsonl(path: str | os.PathLike[str], rows: list[Any]) -> None:
    """Replace a JSON-lines file with ``rows`` atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
