"""The registry of cell executors: the names ``--executor`` accepts and the check of which supernet runs
which executor. The executors themselves: the reference loop in :mod:`fastnas.nn.cell`, the fused one in
:mod:`fastnas.nn.fast_executor` (which registers itself as ``fast``)."""

from __future__ import annotations

from collections.abc import Callable

from fastnas.algorithms.options import OptionGroup
from fastnas.errors import ConfigError
from fastnas.nn.cell import CellExecutor, ReferenceExecutor

__all__ = [
    "AUTO",
    "CellExecutor",
    "ExecutorFactory",
    "ReferenceExecutor",
    "build_executor",
    "check_executor",
    "executor_names",
    "register_executor",
]


AUTO = "auto"
"""The default executor name: the fused executor where its kernels run, else the reference loop (every
supernet accepts it; one that runs only its reference loop runs that)."""

ExecutorFactory = Callable[[OptionGroup | None], CellExecutor]
"""``factory(options) -> executor``: makes a cell executor from the supernet's options
(:class:`~fastnas.nn.supernet_options.SupernetOptions`; None: the defaults)."""

_EXECUTORS: dict[str, ExecutorFactory] = {ReferenceExecutor.name: lambda options: ReferenceExecutor()}


def executor_names() -> tuple[str, ...]:
    """The names ``--executor`` accepts: every registered executor (``reference``; ``fast`` once
    :mod:`fastnas.nn.fast_executor` is imported, which :mod:`fastnas.nn` does)."""
    return tuple(_EXECUTORS)


def build_executor(name: str, options: OptionGroup | None = None) -> CellExecutor:
    """The executor registered as ``name``, made for a supernet with ``options``."""
    try:
        factory = _EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"unknown cell executor {name!r}; available: {', '.join(_EXECUTORS)}") from None
    return factory(options)


def check_executor(name: str, supported: tuple[str, ...] | None, supernet: str) -> None:
    """Refuse executor ``name`` for a ``supernet`` that runs only ``supported`` (None: every registered
    executor): the one check and message of which supernet runs which executor."""
    if name not in _EXECUTORS:
        raise ConfigError(f"unknown cell executor {name!r}; available: {', '.join(_EXECUTORS)}")
    if supported is not None and name not in supported and name != AUTO:
        raise ConfigError(
            f"--executor {name} does not apply to the {supernet} supernet, which runs its cells with "
            f"{' or '.join(supported)} only; use --executor {supported[0]}"
        )


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make an executor selectable by name (``--executor NAME``, ``SupernetOptions(executor=NAME)``); the
    supernets that run every executor (the DARTS one) accept it at once."""
    _EXECUTORS[name] = factory
