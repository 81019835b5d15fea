"""Search spaces: what can be searched (op names, node count, cell types, edges)."""

from __future__ import annotations

from typing import Any

from fastnas.spaces.base import SearchSpace
from fastnas.spaces.darts import DartsSpace, Edge

SPACE_NAMES: tuple[str, ...] = ("darts", "nb201")

#: Supernet sizes that differ from a method's defaults on a given space (``layers`` = cells per stage
#: on NAS-Bench-201, REFERENCE.md section 10).
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {"darts": {}, "nb201": {"C": 16, "layers": 5}}


def build_space(name: str = "darts", **options: Any) -> SearchSpace:
    """Build a search space by name; ``options`` are the space's fields (e.g. ``num_nodes=3``)."""
    if name == "darts":
        return DartsSpace(**options)
    if name == "nb201":
        from fastnas.spaces.nb201 import NB201Space

        return NB201Space(**options)
    raise ValueError(f"unknown search space {name!r}; available: {', '.join(SPACE_NAMES)}")


__all__ = ["SPACE_DEFAULTS", "SPACE_NAMES", "DartsSpace", "Edge", "SearchSpace", "build_space"]
