"""The supernet's options, declared once: how its cells run and what its edges see.

:class:`SupernetOptions` holds the options a user sets for any method's supernet (``--executor``,
``--partial-k``, ``--partial-bypass``): each with its one default, help text and check. The command line
builds its "supernet options" flags from it, a search config resolves it once (``config.json`` records
it under ``supernet_options``), and every supernet builder receives it whole inside a
:class:`SupernetShape` (the sizes of one supernet and its options). A new option is a field here (or in a
subclass made current with :func:`register_supernet_options`) read by the code that implements it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastnas.algorithms.options import OptionGroup, option
from fastnas.errors import ConfigError
from fastnas.nn.executor import AUTO, executor_names
from fastnas.nn.mixed import BYPASS_POOLS, PartialChannels
from fastnas.nn.skeleton import STEMS, Stem

__all__ = [
    "SupernetOptions",
    "SupernetShape",
    "register_supernet_options",
    "supernet_options_class",
]


@dataclass(frozen=True)
class SupernetOptions(OptionGroup):
    """Options of every method's supernet. ``partial_k``/``partial_bypass``: PC-DARTS' partial channel
    connections (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for
    Memory-Efficient Architecture Search", ICLR 2020, section 3.2), which fastnas offers to every method."""

    owner = "the supernet"

    executor: str = option(
        AUTO,
        "how search cells run: reference (the DARTS loop), fast (batched edges, fused kernels on CUDA) or "
        "auto (fast on CUDA, reference elsewhere)",
        choices=executor_names,
    )
    partial_k: int = option(
        1,
        "partial channels (PC-DARTS): 1/K of each edge's channels enter its mixed op, the rest bypass it "
        "(1 = off; a method's published default applies when not given: 4 for pc-darts)",
        ge=1,
    )
    partial_bypass: str = option(
        "max",
        "how a stride-2 edge downsamples its bypassed channels with --partial-k: a 2x2 max pool (PC-DARTS' "
        "code) or avg pool",
        choices=BYPASS_POOLS,
    )

    @property
    def partial(self) -> PartialChannels:
        return PartialChannels(self.partial_k, self.partial_bypass)


_current: list[type[SupernetOptions]] = [SupernetOptions]


def supernet_options_class() -> type[SupernetOptions]:
    """The options class the command line, configs and builders use (:class:`SupernetOptions` unless an
    extension registered a subclass)."""
    return _current[0]


def register_supernet_options(cls: type[SupernetOptions]) -> type[SupernetOptions]:
    """Make ``cls`` (a subclass of :class:`SupernetOptions`, adding options) the supernet options of every
    new run; returns the class it replaces (register it again to restore it)."""
    previous = _current[0]
    if not (isinstance(cls, type) and issubclass(cls, SupernetOptions)):
        raise TypeError(f"supernet options must subclass SupernetOptions, got {cls!r}")
    _current[0] = cls
    return previous


def _default_options() -> SupernetOptions:
    return supernet_options_class()()


@dataclass(frozen=True)
class SupernetShape:
    """One supernet to build: initial channels, cells (cells per stage on NAS-Bench-201), classes, input
    channels, stem, and the :class:`SupernetOptions`. The checks that tie options to sizes are here."""

    C: int = 16
    layers: int = 8
    num_classes: int = 10
    in_channels: int = 3
    stem: Stem = "cifar"
    options: SupernetOptions = field(default_factory=_default_options)

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}; use one of {', '.join(STEMS)}")
        k = self.options.partial_k
        if self.C % k:
            divisors = ", ".join(str(d) for d in range(1, min(self.C, 8) + 1) if self.C % d == 0)
            raise ConfigError(
                f"--partial-k {k} does not divide the initial channels --C {self.C}: every edge splits its "
                f"channels into {k} equal parts; choose a K that divides C (e.g. {divisors})"
            )
