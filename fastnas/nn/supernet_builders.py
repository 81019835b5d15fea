"""Supernet builders: how each kind of supernet is built from a :class:`SupernetShape`, and which cell
executors it runs (checked here, in :meth:`SupernetBuilder.check`, for every builder)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fastnas.algorithms.entrannas import EnTranNASOptions, TransitRule
from fastnas.errors import ConfigError
from fastnas.nn.darts_supernet import Supernet
from fastnas.nn.entrannas import EXECUTORS as ENTRANNAS_EXECUTORS
from fastnas.nn.entrannas import build_entrannas_supernet
from fastnas.nn.executor import check_executor
from fastnas.nn.nb201 import NB201Supernet
from fastnas.nn.supernet_options import SupernetShape
from fastnas.spaces import DartsSpace, NB201Space
from fastnas.spaces.base import SearchSpace

__all__ = [
    "DARTS_SUPERNET",
    "NB201_SUPERNET",
    "SupernetBuilder",
    "build_space_supernet",
    "entrannas_supernet",
    "space_supernet",
]


@dataclass(frozen=True)
class SupernetBuilder:
    """One kind of supernet: ``build(space, shape)`` and the executors its cells run (None: every
    registered executor, e.g. one added with :func:`~fastnas.nn.executor.register_executor`)."""

    name: str
    build: Callable[[Any, SupernetShape], nn.Module]
    executors: tuple[str, ...] | None = None

    def check(self, shape: SupernetShape) -> None:
        """Refuse options this supernet cannot run (the executor), with one message for every builder."""
        check_executor(shape.options.executor, self.executors, self.name)

    def __call__(self, space: SearchSpace, shape: SupernetShape) -> nn.Module:
        self.check(shape)
        return self.build(space, shape)


def _nb201(space: NB201Space, shape: SupernetShape) -> NB201Supernet:
    if shape.stem != "cifar":
        raise ConfigError(f"the NAS-Bench-201 supernet has one stem; stem {shape.stem!r} does not apply")
    return NB201Supernet(
        space,
        C=shape.C,
        N=shape.layers,
        num_classes=shape.num_classes,
        in_channels=shape.in_channels,
        partial=shape.options.partial,
    )


DARTS_SUPERNET = SupernetBuilder("DARTS", Supernet.from_shape)
NB201_SUPERNET = SupernetBuilder("NAS-Bench-201", _nb201, NB201Supernet.EXECUTORS)


def space_supernet(space: SearchSpace) -> SupernetBuilder:
    """The builder of a space's own supernet: DARTS for a DARTS space, NAS-Bench-201 for the NB201 space
    (``layers`` = cells per stage there)."""
    if isinstance(space, DartsSpace):
        return DARTS_SUPERNET
    if isinstance(space, NB201Space):
        return NB201_SUPERNET
    raise ConfigError(f"no supernet for the search space {space.name!r}")


def build_space_supernet(space: SearchSpace, shape: SupernetShape) -> nn.Module:
    """The supernet of ``space`` (:func:`space_supernet`) built to ``shape``."""
    return space_supernet(space)(space, shape)


def entrannas_supernet(options: EnTranNASOptions, transit_rule: TransitRule) -> SupernetBuilder:
    """The builder of an EnTranNAS method's Engine/Transit supernet (its options, its Transit rule)."""

    def build(space: DartsSpace, shape: SupernetShape) -> nn.Module:
        return build_entrannas_supernet(space, shape, options, transit_rule)

    return SupernetBuilder("EnTranNAS", build, ENTRANNAS_EXECUTORS)
