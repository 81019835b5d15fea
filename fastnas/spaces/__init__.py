"""Search spaces: what can be searched (op names, node count, cell types, edges). Data only."""

from __future__ import annotations

from typing import Any

from fastnas.errors import ConfigError
from fastnas.ops import EXTENDED_OPS
from fastnas.spaces.base import SearchSpace, SpaceEdge
from fastnas.spaces.darts import DartsSpace, Edge
from fastnas.spaces.nb201 import NB201Edge, NB201Space

SPACE_NAMES: tuple[str, ...] = ("darts", "darts-extended", "nb201")

#: Supernet sizes that differ from a method's defaults on a given space (``layers`` = cells per stage
#: on NAS-Bench-201, REFERENCE.md section 10).
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "darts": {},
    "darts-extended": {},
    "nb201": {"C": 16, "layers": 5},
}


def build_space(name: str = "darts", **options: Any) -> DartsSpace | NB201Space:
    """Build a search space by name; ``options`` are the space's fields (e.g. ``num_nodes=3``)."""
    if name == "darts":
        return DartsSpace(**options)
    if name == "darts-extended":
        # The 8 DARTS ops + conv_1x1, conv_3x3, conv_1x3_3x1, conv_1x5_5x1, conv_1x7_7x1 (13 ops,
        # ``none`` included; seed 002 counts 12 without it, and EnTranNAS-DST drops ``none``).
        return DartsSpace(**{"ops": EXTENDED_OPS, "name": "darts-extended", **options})
    if name == "nb201":
        return NB201Space(**options)
    raise ConfigError(f"unknown search space {name!r}; available: {', '.join(SPACE_NAMES)}")


__all__ = [
    "SPACE_DEFAULTS",
    "SPACE_NAMES",
    "DartsSpace",
    "Edge",
    "NB201Edge",
    "NB201Space",
    "SearchSpace",
    "SpaceEdge",
    "build_space",
]
