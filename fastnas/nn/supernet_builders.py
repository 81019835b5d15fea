"""The supernet of a search space, built from a :class:`~fastnas.nn.skeleton.SupernetShape`."""

from __future__ import annotations

from torch import nn

from fastnas.errors import ConfigError
from fastnas.nn.darts_supernet import Supernet
from fastnas.nn.mixed import PartialChannels
from fastnas.nn.nb201 import NB201Supernet
from fastnas.nn.skeleton import SupernetShape
from fastnas.spaces import DartsSpace, NB201Space
from fastnas.spaces.base import SearchSpace

__all__ = ["build_space_supernet"]


def build_space_supernet(space: SearchSpace, shape: SupernetShape) -> nn.Module:
    """The DARTS supernet of a DARTS space, the NAS-Bench-201 supernet of the NB201 space (``layers`` =
    cells per stage there)."""
    partial = PartialChannels(shape.partial_k, shape.partial_bypass)
    if shape.C % partial.k:
        raise ConfigError(
            f"--partial-k {partial.k} does not divide the initial channels --C {shape.C}: every edge "
            f"must split its channels into {partial.k} equal parts; choose a K that divides C (1 = off)"
        )
    if isinstance(space, DartsSpace):
        return Supernet(
            space,
            C=shape.C,
            layers=shape.layers,
            num_classes=shape.num_classes,
            in_channels=shape.in_channels,
            executor=shape.executor,
            stem=shape.stem,
            partial=partial,
        )
    if isinstance(space, NB201Space):
        if shape.stem != "cifar":
            raise ConfigError(f"the NAS-Bench-201 supernet has one stem; stem {shape.stem!r} does not apply")
        return NB201Supernet(
            space,
            C=shape.C,
            N=shape.layers,
            num_classes=shape.num_classes,
            in_channels=shape.in_channels,
            executor=shape.executor,
            partial=partial,
        )
    raise ConfigError(f"no supernet for the search space {space.name!r}")
