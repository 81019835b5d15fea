"""One switch that forces the plain PyTorch reference implementations everywhere.

Fused kernels (C++/CUDA ops of ``fastnas._C``, Triton kernels) check :func:`reference_forced` and
take the reference path when it is true: set ``FASTNAS_FORCE_REFERENCE=1`` in the environment, or
wrap code in ``with force_reference():``. The context manager uses a ``contextvars.ContextVar``, so it
is local to the thread (and asyncio task) that enters it and overrides the environment variable
there; ``force_reference(False)`` re-enables the fused paths inside its block.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

__all__ = ["ENV_VAR", "force_reference", "reference_forced"]

ENV_VAR = "FASTNAS_FORCE_REFERENCE"
_TRUE = frozenset({"1", "true", "yes", "on"})

_forced: contextvars.ContextVar[bool | None] = contextvars.ContextVar("fastnas_force_reference", default=None)


def reference_forced() -> bool:
    """True when the reference implementations must be used (context manager, else the environment)."""
    value = _forced.get()
    if value is not None:
        return value
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


@contextlib.contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Use the PyTorch reference implementations (``enabled=True``) or the fused ones inside the block.

    A block that asks for the setting already in force sets nothing (so code traced by ``torch.compile``
    inside an outer ``force_reference()`` does not break its graph on the context variable)."""
    if _forced.get() is bool(enabled):
        yield
        return
    token = _forced.set(bool(enabled))
    try:
        yield
    finally:
        _forced.reset(token)
