"""Search spaces: what can be searched (op names, node count, cell types, edges)."""

from __future__ import annotations

from typing import Any

from fastnas.spaces.base import SearchSpace
from fastnas.spaces.darts import DartsSpace, Edge

SPACE_NAMES: tuple[str, ...] = ("darts", "darts-extended", "nb201")

#: Supernet sizes that differ from a method's defaults on a given space (``layers`` = cells per stage
#: on NAS-Bench-201, REFERENCE.md section 10).
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "darts": {},
    "darts-extended": {},
    "nb201": {"C": 16, "layers": 5},
}


def build_space(name: str = "darts", **options: Any) -> SearchSpace:
    """Build a search space by name; ``options`` are the space's fields (e.g. ``num_nodes=3``)."""
    if name == "darts":
        return DartsSpace(**options)
    if name == "darts-extended":
        # The 8 DARTS ops + conv_1x1, conv_3x3, conv_1x3_3x1, conv_1x5_5x1, conv_1x7_7x1 (13 ops,
        # ``none`` included; seed 002 counts 12 without it, and EnTranNAS-DST drops ``none``).
        from fastnas.ops import EXTENDED_OPS

        return DartsSpace(**{"ops": EXTENDED_OPS, "name": "darts-extended", **options})
    if name == "nb201":
        from fastnas.spaces.nb201 import NB201Space

        return NB201Space(**options)
    raise ValueError(f"unknown search space {name!r}; available: {', '.join(SPACE_NAMES)}")


__all__ = ["SPACE_DEFAULTS", "SPACE_NAMES", "DartsSpace", "Edge", "SearchSpace", "build_space"]
