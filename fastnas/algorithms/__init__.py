"""Search methods, one small module each, all driven by the shared loop in :mod:`fastnas.train`."""

from __future__ import annotations

from typing import Any

from fastnas.algorithms.base import SearchAlgorithm, SearchDefaults
from fastnas.algorithms.darts import DARTS
from fastnas.algorithms.derivation import derive_darts, derive_darts_cell
from fastnas.algorithms.entrannas import EnTranNAS, EnTranNASDST
from fastnas.spaces.base import SearchSpace

METHODS: dict[str, type[SearchAlgorithm]] = {
    "darts": DARTS,
    "entrannas": EnTranNAS,
    "entrannas-dst": EnTranNASDST,
}


def get_method(name: str) -> type[SearchAlgorithm]:
    """The algorithm class registered as ``name`` (case-insensitive)."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown search method {name!r}; available: {', '.join(sorted(METHODS))}") from None


def build_algorithm(name: str, space: SearchSpace, **options: Any) -> SearchAlgorithm:
    """Instantiate method ``name`` on ``space``; ``options`` go to its constructor (e.g. ``order=2``)."""
    return get_method(name)(space, **options)


__all__ = [
    "DARTS",
    "METHODS",
    "EnTranNAS",
    "EnTranNASDST",
    "SearchAlgorithm",
    "SearchDefaults",
    "build_algorithm",
    "derive_darts",
    "derive_darts_cell",
    "get_method",
]
