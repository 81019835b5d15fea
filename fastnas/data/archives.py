"""Reading dataset archives (``.tar``, ``.tar.gz``, ...) so that a truncated or damaged one is a clear error.

A compressed archive cut short fails inside the decompressor; a plain ``.tar`` cut at a member boundary
does not: :mod:`tarfile` stops there as if the archive ended, and part of the dataset would be read
without a word. :func:`check_tar_end` catches that case: a complete tar ends with at least two zero
blocks after its last member.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from fastnas.errors import DataError, FastnasError

__all__ = ["ARCHIVE_ERRORS", "check_tar_end", "damaged_archive", "is_compressed"]

ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
)
"""What reading a damaged archive raises (tarfile, gzip, bz2 and xz errors; bz2 also raises a bare
``OSError`` without an errno, handled in :func:`damaged_archive`)."""

_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_END_BLOCKS = 2 * 512


def is_compressed(path: Path) -> bool:
    """Whether ``path`` starts with the magic bytes of gzip, bzip2 or xz."""
    with path.open("rb") as handle:
        head = handle.read(6)
    return any(head.startswith(magic) for magic in _COMPRESSED_MAGIC)


def check_tar_end(path: Path, end_offset: int) -> None:
    """Raise :class:`~fastnas.errors.DataError` if the plain tar ``path`` lacks its end-of-archive blocks
    after ``end_offset`` (where :mod:`tarfile` stopped reading): the file was truncated."""
    if is_compressed(path):
        return  # a truncated compressed stream fails in the decompressor
    with path.open("rb") as handle:
        handle.seek(end_offset)
        tail = handle.read(_END_BLOCKS)
    if len(tail) < _END_BLOCKS or tail.count(0) != len(tail):
        raise DataError(
            f"archive {path} is truncated: it ends after {end_offset:,} bytes without the end-of-archive "
            "marker, so members are missing - download or copy it again"
        )


@contextlib.contextmanager
def damaged_archive(path: Path) -> Iterator[None]:
    """Turn the errors of reading a damaged archive into one :class:`~fastnas.errors.DataError`."""
    try:
        yield
    except FastnasError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, ARCHIVE_ERRORS) and exc.errno is not None:
            raise  # a real I/O error (permissions, disk), not damaged data
        raise DataError(
            f"archive {path} is truncated or damaged ({type(exc).__name__}: {exc}); download or copy it again"
        ) from None
