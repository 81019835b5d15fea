"""Errors about what a user gave fastnas: an option, a file, a dataset, a genotype, a run directory.

Every such error derives from :class:`FastnasError`; its message says what is wrong and how to fix
it. The command line prints a :class:`FastnasError` as one line and exits with status 2; any other
exception is a bug and keeps its traceback. Each class also derives from the built-in exception a
caller would expect (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` still works.
Pure Python: importable from every layer.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "DiskFullError",
    "DownloadError",
    "FastnasError",
    "MissingDependencyError",
    "MissingPathError",
    "NonFiniteError",
    "RunExistsError",
]


class FastnasError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ConfigError(FastnasError, ValueError):
    """A bad option or configuration value (command line, ``config.json``, method options)."""


class DataError(FastnasError, ValueError):
    """A dataset, results table or history file that cannot be used as it is."""


class MissingPathError(FastnasError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DownloadError(FastnasError, RuntimeError):
    """A dataset download failed (no internet, or the server refused)."""


class MissingDependencyError(FastnasError, ImportError):
    """An optional package that this input needs is not installed; the message names it."""


class RunExistsError(FastnasError, FileExistsError):
    """A run directory already holds a run; resume it, overwrite it explicitly, or pick another name."""


class CheckpointError(FastnasError, ValueError):
    """A checkpoint that fails verification or does not fit the run it should continue."""


class DeviceError(FastnasError, RuntimeError):
    """A device was requested that this machine does not have."""


class DiskFullError(FastnasError, OSError):
    """A write failed for lack of space; the message names the file and the space needed."""


class NonFiniteError(FastnasError, RuntimeError):
    """A loss or the architecture weights became NaN or infinite: the run diverged. It stops and keeps
    its last good checkpoint; nothing is derived from non-finite weights."""
