"""Loader of the optional C++/CUDA extension ``fastnas._C``.

The extension registers the ``torch.ops.fastnas.*`` operators (see ``csrc/`` and DEVELOPERS.md).
It is imported once, lazily; a missing or broken build is recorded, never raised, so that every
operator can fall back to its PyTorch reference.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

__all__ = ["cuda_compiled", "extension_available", "load_error"]

_lock = threading.Lock()
_state: tuple[ModuleType | None, str | None] | None = None  # (module, error) once the import was tried


def _load() -> tuple[ModuleType | None, str | None]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _try_import()
    return _state


def _try_import() -> tuple[ModuleType | None, str | None]:
    try:
        import torch  # noqa: F401  (loads libtorch before the extension needs its symbols)

        module = importlib.import_module("fastnas._C")
    except Exception as exc:  # ImportError, OSError (undefined symbol after a torch upgrade), ...
        hint = (
            "build it with `pip install --no-build-isolation -e .` in the repository root "
            "(see DEVELOPERS.md); until then fastnas uses the PyTorch reference implementations"
        )
        return None, f"{type(exc).__name__}: {exc}; {hint}"
    return module, None


def extension_available() -> bool:
    """True when ``fastnas._C`` imported and its operators are registered."""
    return _load()[0] is not None


def cuda_compiled() -> bool:
    """True when the extension was built with its CUDA kernels (``FASTNAS_WITH_CUDA``)."""
    module = _load()[0]
    return module is not None and bool(module.with_cuda())


def load_error() -> str | None:
    """Why the extension is unavailable, or None when it loaded."""
    return _load()[1]
