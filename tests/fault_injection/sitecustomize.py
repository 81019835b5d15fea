"""Fault injection for ``tests/test_kill_matrix.py``, loaded by a ``fastnas`` subprocess whose PYTHONPATH
starts with this folder.

- ``FASTNAS_TEST_KILL_AT="replace:N"`` (or ``fsync:N``) kills the process with SIGKILL at the N-th call of
  ``os.replace`` (``os.fsync``), before the call runs: a ``kill -9`` at that exact write point (between the
  temporary file and its rename, between the two renames of a checkpoint rotation, before an append is
  flushed).
- ``FASTNAS_TEST_COUNT_WRITES=PATH`` writes ``{"replace": n, "fsync": m}`` to PATH at exit: how many write
  points an uninterrupted run passes.
"""

import atexit
import json
import os
import signal

_counts = {"replace": 0, "fsync": 0}
_kill = os.environ.get("FASTNAS_TEST_KILL_AT", "")
_name, _, _index = _kill.partition(":")
_target = (_name, int(_index)) if _index.isdigit() else None


def _wrap(name: str) -> None:
    original = getattr(os, name)

    def counted(*args: object, **kwargs: object) -> object:
        _counts[name] += 1
        if _target == (name, _counts[name]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(os, name, counted)


if _target is not None or os.environ.get("FASTNAS_TEST_COUNT_WRITES"):
    for _op in _counts:
        _wrap(_op)
    _out = os.environ.get("FASTNAS_TEST_COUNT_WRITES")

    def _write_counts() -> None:
        with open(str(_out), "w") as handle:
            handle.write(json.dumps(_counts))

    if _out:
        atexit.register(_write_counts)
