"""What every search space provides: data only (op names, edges, cell types), no networks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class SpaceEdge(Protocol):
    """One edge of a cell: from state ``source`` into node ``node``."""

    @property
    def index(self) -> int: ...

    @property
    def source(self) -> int: ...

    @property
    def node(self) -> int: ...


class SearchSpace(Protocol):
    """A search space: its name, the candidate ops in alpha-column order, the edges of a cell and the
    cell types that own architecture parameters. Supernets are built from it in :mod:`fastnas.nn`,
    derivation rules for it live in :mod:`fastnas.algorithms.derivation`."""

    @property
    def name(self) -> str: ...

    @property
    def ops(self) -> tuple[str, ...]: ...

    @property
    def num_ops(self) -> int: ...

    @property
    def edges(self) -> Sequence[SpaceEdge]: ...

    @property
    def num_edges(self) -> int: ...

    @property
    def cell_types(self) -> tuple[str, ...]: ...

    def op_index(self, name: str) -> int: ...
