"""The DARTS cell search space (REFERENCE.md section 1; seed 002 Eq. 1).

A space is data: which ops are candidates, how many intermediate nodes a cell has, how many
states its output concatenates, how many normal-cell types there are, and hence which edges exist.
Node ``j`` (0-based intermediate node, state index ``j + 2``) takes one edge from every earlier
state, so a 4-node cell has 2 + 3 + 4 + 5 = 14 edges, ordered node by node, source by source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastnas.errors import ConfigError
from fastnas.ops import DARTS_OPS, get_op_spec


@dataclass(frozen=True)
class Edge:
    """One edge of a cell DAG: from state ``source`` into intermediate node ``node`` (0-based)."""

    index: int
    source: int
    node: int


@dataclass(frozen=True)
class DartsSpace:
    """The DARTS cell space.

    Args:
        ops: candidate op names in alpha-column order (default: the 8 DARTS ops).
        num_nodes: intermediate nodes per cell (4 in DARTS; 3 is a thesis variant, seed 004).
        multiplier: how many of the last states the cell output concatenates (4 in DARTS).
        num_normal_types: 1 (DARTS) or more distinct normal cells, one per stage (seed 004).
    """

    ops: tuple[str, ...] = DARTS_OPS
    num_nodes: int = 4
    multiplier: int = 4
    num_normal_types: int = 1
    name: str = field(default="darts", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise ConfigError("a search space needs at least one candidate op")
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"duplicate ops in the search space: {list(self.ops)}")
        for op in self.ops:
            get_op_spec(op)  # raises UnknownOpError naming the known ops
        if all(get_op_spec(op).kind == "zero" for op in self.ops):
            raise ConfigError("the search space needs at least one op other than 'none'")
        if self.num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if not 1 <= self.multiplier <= self.num_nodes:
            raise ConfigError(f"multiplier must be in [1, num_nodes={self.num_nodes}], got {self.multiplier}")
        if self.num_normal_types < 1:
            raise ConfigError(f"num_normal_types must be >= 1, got {self.num_normal_types}")

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def edges(self) -> tuple[Edge, ...]:
        """All edges in DARTS order (node by node, then by source state)."""
        out: list[Edge] = []
        for node in range(self.num_nodes):
            for source in range(node + 2):
                out.append(Edge(len(out), source, node))
        return tuple(out)

    @property
    def num_edges(self) -> int:
        return sum(node + 2 for node in range(self.num_nodes))

    @property
    def concat(self) -> tuple[int, ...]:
        """State indices the cell output concatenates."""
        total = self.num_nodes + 2
        return tuple(range(total - self.multiplier, total))

    @property
    def normal_types(self) -> tuple[str, ...]:
        """Names of the normal-cell types: ``normal``, then ``normal_2``, ``normal_3`` ..."""
        return ("normal", *(f"normal_{i}" for i in range(2, self.num_normal_types + 1)))

    @property
    def cell_types(self) -> tuple[str, ...]:
        """Every cell type that owns architecture parameters (normal types first, then ``reduce``)."""
        return (*self.normal_types, "reduce")

    def op_index(self, name: str) -> int:
        try:
            return self.ops.index(name)
        except ValueError:
            raise ConfigError(f"op {name!r} is not in this space; its ops are {list(self.ops)}") from None

    def without_ops(self, excluded: tuple[str, ...] | list[str]) -> DartsSpace:
        """The same space with some ops removed (thesis seed 004: excluding any op)."""
        for op in excluded:
            self.op_index(op)
        kept = tuple(op for op in self.ops if op not in set(excluded))
        return DartsSpace(kept, self.num_nodes, self.multiplier, self.num_normal_types, self.name)
