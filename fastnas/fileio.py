"""Writing run files so that a crash, a kill or a full disk never leaves a half-written one.

- :func:`atomic_write` writes through a temporary file in the same folder, ``fsync`` and ``os.replace``:
  readers see the old file or the new one, never a mix. A full disk raises
  :class:`~fastnas.errors.DiskFullError` naming the file and the space it needed; the old file stays.
- :func:`append_jsonl` appends one whole line per call (one ``write`` on an ``O_APPEND`` descriptor,
  then ``fsync``); :func:`read_jsonl` drops a torn last line (a kill in the middle of an append) with
  a warning, and names the file and line of any other damage.
- :func:`remove_stale_temporaries` deletes the temporary files a kill left behind.
- :func:`read_regular_bytes` is how run files are read: only a regular file (a symlink to one is fine) is
  opened - a directory, a FIFO (which would block the open), a device (``/dev/zero`` never ends) or a
  socket is refused by its type, checked with ``stat`` before the open - and no more than a bound is
  read into memory: :data:`MAX_JSON_BYTES` for a JSON file (``config.json``), :data:`MAX_HISTORY_BYTES`
  for a JSON-lines history, :func:`max_checkpoint_bytes` for a checkpoint. Each bound can be raised with
  its environment variable. The errors are one line naming the file and what was found there.

Pure Python (no torch), so every layer can use it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import unicodedata
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

from fastnas.errors import ConfigError, DataError, DiskFullError, MissingPathError

__all__ = [
    "MAX_HISTORY_BYTES",
    "MAX_JSON_BYTES",
    "MAX_NAME_BYTES",
    "append_jsonl",
    "append_text",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_folder_name",
    "expand_user",
    "file_kind",
    "history_bytes_bound",
    "json_bytes_bound",
    "max_checkpoint_bytes",
    "read_json_file",
    "read_jsonl",
    "read_regular_bytes",
    "regular_file_size",
    "remove_stale_temporaries",
    "rewrite_jsonl",
]

_TMP_SUFFIX = ".tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_FILE_MODE = 0o644
MAX_NAME_BYTES = 255
"""Longest file or folder name, in bytes of its file-system encoding (``NAME_MAX`` of Linux, macOS and
Windows file systems); a longer name fails with ``ENAMETOOLONG`` when the folder is created."""
_LINE_BREAKS = frozenset("\u0085\u2028\u2029")
MAX_JSON_BYTES = 64 * 2**20
"""Largest JSON run file (``config.json``, ``repairs.json``...) read into memory: 64 MiB, a thousand times
what fastnas writes (``FASTNAS_MAX_JSON_BYTES`` raises it)."""
MAX_HISTORY_BYTES = 1024 * 2**20
"""Largest JSON-lines history (``metrics.jsonl``, ``alphas.jsonl``, ``sampling.jsonl``) read into memory:
1 GiB (a 600-epoch search writes about 10 MB of alphas; DDSAS with a resample every step about 10 kB a
step); ``FASTNAS_MAX_HISTORY_BYTES`` raises it."""
_BOUND_ENV = {
    "MAX_JSON_BYTES": "FASTNAS_MAX_JSON_BYTES",
    "MAX_HISTORY_BYTES": "FASTNAS_MAX_HISTORY_BYTES",
    "MAX_CHECKPOINT_BYTES": "FASTNAS_MAX_CHECKPOINT_BYTES",
}


def check_folder_name(name: str, option: str) -> None:
    """Raise :class:`~fastnas.errors.ConfigError` naming ``option`` unless ``name`` is a plain folder
    name: not empty, ``.`` or ``..``, no path separator, no control character (a newline would split
    every log line and listing that names the folder), at most :data:`MAX_NAME_BYTES` bytes."""
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or os.sep in name:
        raise ConfigError(f"{option} must be a plain folder name, got {name!r}")
    for position, char in enumerate(name):
        if unicodedata.category(char) == "Cc" or char in _LINE_BREAKS:
            raise ConfigError(
                f"{option} {name!r} contains the control character {char!r} at position {position}; use "
                "printable characters only"
            )
    try:
        size = len(os.fsencode(name))
    except UnicodeEncodeError:
        raise ConfigError(f"{option} {name!r} cannot be written as a file name on this system") from None
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"{option} is {size:,} bytes long ({name[:24]!r}...); a folder name may have at most "
            f"{MAX_NAME_BYTES} bytes"
        )


def expand_user(path: str | os.PathLike[str], what: str) -> Path:
    """``Path(path).expanduser()``; a ``~user`` whose user does not exist (or a ``~`` without a known home
    folder) is a :class:`~fastnas.errors.ConfigError` naming ``what`` and the path, not a traceback."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        head = str(path).replace(os.sep, "/").split("/", 1)[0]
        why = "no home folder is known (HOME is not set)" if head == "~" else f"there is no user {head[1:]!r}"
        raise ConfigError(f"{what} {str(path)!r}: {why} to expand {head!r}; give the full path") from None


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


def _bound(name: str, default: int) -> int:
    """The bound ``name``: its environment variable (:data:`_BOUND_ENV`) when set, else ``default``."""
    variable = _BOUND_ENV[name]
    text = os.environ.get(variable, "").strip().replace("_", "")
    if not text:
        return default
    if not text.isdigit() or len(text) > 30 or int(text) < 1:
        raise ConfigError(
            f"{variable} must be a positive whole number of bytes, got {os.environ[variable]!r}"
        )
    return int(text)


def json_bytes_bound() -> int:
    """:data:`MAX_JSON_BYTES`, or ``FASTNAS_MAX_JSON_BYTES`` when set."""
    return _bound("MAX_JSON_BYTES", MAX_JSON_BYTES)


def history_bytes_bound() -> int:
    """:data:`MAX_HISTORY_BYTES`, or ``FASTNAS_MAX_HISTORY_BYTES`` when set."""
    return _bound("MAX_HISTORY_BYTES", MAX_HISTORY_BYTES)


def max_checkpoint_bytes() -> int:
    """Largest checkpoint fastnas reads: half of this machine's physical memory (at least 1 GiB; 16 GiB
    where the memory size is unknown), or ``FASTNAS_MAX_CHECKPOINT_BYTES`` when set. Loading holds the
    file's bytes and then the tensors unpickled from them, about twice its size, so a larger checkpoint
    could not be loaded anyway; the run's own checkpoints (weights, optimiser moments) are far smaller."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        memory = 32 * 2**30
    return _bound("MAX_CHECKPOINT_BYTES", max(memory // 2, 2**30))


def file_kind(mode: int) -> str:
    """What a ``stat`` mode that is not a regular file is: ``"a directory"``, ``"a FIFO"``..."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _size_text(size: int) -> str:
    if size >= 2**30 and size % 2**30 == 0:
        return f"{size // 2**30} GiB"
    if size >= 2**20:
        return f"{size / 2**20:,.0f} MiB"
    return f"{size:,} bytes"


def regular_file_size(
    path: str | os.PathLike[str],
    max_bytes: int | None,
    *,
    error: type[Exception] = DataError,
    bound: str = "",
) -> int:
    """The size of ``path``, which must be a regular file (a symlink to one is fine) of at most
    ``max_bytes``; anything else is ``error`` naming the file and what is there ("is a directory", "is a
    FIFO (named pipe)", "is a character device (a symlink to /dev/zero)", "is larger than 64 MiB").
    ``bound``: the environment variable that raises ``max_bytes``, named in the message. A missing
    file (or a symlink to one) raises :class:`FileNotFoundError`: the caller decides what that means."""
    target = Path(path)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        if os.path.islink(target):
            raise error(
                f"{target} is a symlink to {os.readlink(target)}, which does not exist; restore that file or "
                "remove the symlink"
            ) from None
        raise
    except OSError as exc:
        raise error(f"cannot read {target}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        link = f" (a symlink to {os.readlink(target)})" if os.path.islink(target) else ""
        raise error(
            f"{target} is {file_kind(info.st_mode)}{link}, not a regular file; fastnas reads and writes only "
            "regular files there - move it away"
        )
    if max_bytes is not None and info.st_size > max_bytes:
        raise _too_large(target, info.st_size, max_bytes, error, bound)
    return info.st_size


def _too_large(path: Path, size: int, max_bytes: int, error: type[Exception], bound: str) -> Exception:
    raise_it = f"; set {bound} to raise the bound" if bound else ""
    return error(
        f"{path} is larger than {_size_text(max_bytes)} ({size:,} bytes), the most fastnas reads of such a "
        f"file, so it is not one fastnas wrote{raise_it}"
    )


def read_regular_bytes(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    error: type[Exception] = DataError,
    bound: str = "",
) -> bytes:
    """The bytes of ``path``, checked as :func:`regular_file_size` checks it before the open (a FIFO, a
    device or a directory is never opened) and again on the open descriptor (the path may have been
    replaced in between, hence also ``O_NONBLOCK``); at most ``max_bytes + 1`` bytes are read, so a file
    that grows past the bound is refused too. A missing file raises :class:`FileNotFoundError`."""
    target = Path(path)
    regular_file_size(target, max_bytes, error=error, bound=bound)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"cannot read {target}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{target} is {file_kind(mode)}, not a regular file; move it away")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"cannot read {target}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise _too_large(target, len(data), max_bytes, error, bound)
    return data


def read_jsonl(path: str | os.PathLike[str]) -> list[Any]:
    """Rows of a JSON-lines file (``[]`` if it does not exist).

    A last line without its newline that does not parse is the trace of an interrupted append: it is
    dropped with a warning. Any other line that does not parse is damage: :class:`DataError` names the
    file and the line.
    """
    target = Path(path)
    try:
        data = read_regular_bytes(target, history_bytes_bound(), bound=_BOUND_ENV["MAX_HISTORY_BYTES"])
    except FileNotFoundError:
        return []
    if data and not data.strip(b"\0"):
        raise DataError(
            f"{target} holds only zero bytes ({len(data):,}), its data never reached the disk; the history "
            "file is damaged"
        )
    try:
        text = data.decode("utf-8")
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
        except (ValueError, RecursionError) as exc:  # also a huge integer, or nesting too deep
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
            raise DataError(
                f"{target}, line {number}: not valid JSON ({detail}); the history file is damaged - "
                "repair or delete that line"
            ) from None
    if torn is not None:
        try:
            rows.append(json.loads(torn))
        except (ValueError, RecursionError):
            if "\0" in torn:  # an append writes text: zero bytes are a file system's hole, not a torn row
                raise DataError(
                    f"{target}, line {len(lines)}: holds zero bytes, its data never reached the disk; the "
                    "history file is damaged - repair or delete that line"
                ) from None
            warnings.warn(
                f"{target}: dropping a torn last line ({len(torn)} characters, an interrupted append)",
                stacklevel=2,
            )
    return rows


def rewrite_jsonl(path: str | os.PathLike[str], rows: list[Any]) -> None:
    """Replace a JSON-lines file with ``rows`` atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json_file(path: Path, missing: str) -> Any:
    """The JSON content of ``path``; ``missing`` is the message when it does not exist. A damaged file is
    a :class:`~fastnas.errors.ConfigError` naming it and the line; so is anything but a regular file (a
    directory, a FIFO, a device: refused before it is opened) or a file larger than
    :data:`~fastnas.fileio.MAX_JSON_BYTES`."""
    try:
        data = read_regular_bytes(path, json_bytes_bound(), error=ConfigError, bound="FASTNAS_MAX_JSON_BYTES")
    except FileNotFoundError:
        raise MissingPathError(missing) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an int of more than 4,300 digits
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg}, line {exc.lineno}"
        elif isinstance(exc, ValueError):
            detail = str(exc).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string ..."
        else:
            detail = "nested too deeply"
        raise ConfigError(f"{path} is not valid JSON ({detail}); the file is damaged") from None
