"""The DARTS cell search space (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019; in the notation of Eq. 1 of Yang, You, Li, Wang, Qian & Lin, "Towards Improving the
Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture Search", CVPR 2021).

A space is data: which ops are candidates, how many intermediate nodes a cell has, how many
states its output concatenates, how many normal-cell types there are, and hence which edges exist.
Node ``j`` (0-based intermediate node, state index ``j + 2``) takes one edge from every earlier
state, so a 4-node cell has 2 + 3 + 4 + 5 = 14 edges, ordered node by node, source by source.

Per-edge candidate sets (P-DARTS and later methods): :meth:`DartsSpace.with_candidates` restricts each
edge of each cell type to a subset of the space's ops. The space keeps its op list, so alpha matrices,
``alphas.jsonl`` and genotypes keep the same columns; a removed op is a column whose weight is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        num_nodes: intermediate nodes per cell (4 in DARTS; 3 is a variant of Paganucci,
            "Efficient ConvNet Architectures: Differentiable Neural Architecture Search", semester
            thesis, ETH Zurich, 2020, section 3.3.1).
        multiplier: how many of the last states the cell output concatenates (4 in DARTS).
        num_normal_types: 1 (DARTS) or more distinct normal cells, one per stage (Paganucci, 2020,
            section 3.3.2).
        candidates: per-edge candidate sets, ``((cell_type, ((op index, ...) per edge)), ...)``; empty
            (the default) = every op on every edge. Build it with :meth:`with_candidates`.
    """

    ops: tuple[str, ...] = DARTS_OPS
    num_nodes: int = 4
    multiplier: int = 4
    num_normal_types: int = 1
    name: str = field(default="darts", compare=False)
    candidates: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = ()

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
        if self.candidates:
            self._check_candidates()

    def _check_candidates(self) -> None:
        types = [t for t, _ in self.candidates]
        if sorted(types) != sorted(self.cell_types):
            raise ConfigError(
                f"candidate sets must name every cell type {list(self.cell_types)}, got {types}"
            )
        for cell_type, edges in self.candidates:
            if len(edges) != self.num_edges:
                raise ConfigError(
                    f"{cell_type}: candidate sets for {len(edges)} edges, but the cell has {self.num_edges}"
                )
            for e, ops in enumerate(edges):
                if not ops or len(set(ops)) != len(ops) or not all(0 <= k < self.num_ops for k in ops):
                    raise ConfigError(
                        f"{cell_type} edge {e}: candidate ops {list(ops)} must be distinct indices into "
                        f"{list(self.ops)}"
                    )
                if all(get_op_spec(self.ops[k]).kind == "zero" for k in ops):
                    raise ConfigError(
                        f"{cell_type} edge {e}: needs at least one candidate op other than 'none'"
                    )

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

    @property
    def restricted(self) -> bool:
        """Whether some edge has fewer candidates than the space has ops."""
        return any(len(ops) < self.num_ops for _, edges in self.candidates for ops in edges)

    def edge_ops(self, cell_type: str, edge: int) -> tuple[int, ...]:
        """Indices (into :attr:`ops`, ascending) of the candidate ops of ``edge`` in ``cell_type`` cells."""
        for t, edges in self.candidates:
            if t == cell_type:
                return edges[edge]
        if cell_type not in self.cell_types:
            raise ConfigError(f"unknown cell type {cell_type!r}; this space has {list(self.cell_types)}")
        return tuple(range(self.num_ops))

    def candidate_mask(self, cell_type: str) -> list[list[bool]]:
        """``[num_edges][num_ops]``: True where the op is a candidate of the edge."""
        return [
            [k in set(self.edge_ops(cell_type, e)) for k in range(self.num_ops)]
            for e in range(self.num_edges)
        ]

    def with_candidates(self, sets: Mapping[str, Sequence[Sequence[int | str]]]) -> DartsSpace:
        """This space with each edge of each cell type restricted to ``sets[cell_type][edge]`` (op names or
        indices; stored ascending). Cell types left out keep every op."""
        unknown = sorted(set(sets) - set(self.cell_types))
        if unknown:
            raise ConfigError(f"unknown cell type(s) {unknown}; this space has {list(self.cell_types)}")
        out = []
        for t in self.cell_types:
            if t in sets:
                edges = tuple(
                    tuple(sorted(self.op_index(k) if isinstance(k, str) else int(k) for k in ops))
                    for ops in sets[t]
                )
            else:
                edges = tuple(tuple(range(self.num_ops)) for _ in range(self.num_edges))
            out.append((t, edges))
        return DartsSpace(
            self.ops, self.num_nodes, self.multiplier, self.num_normal_types, self.name, tuple(out)
        )

    def candidates_json(self) -> dict[str, list[list[str]]]:
        """``{cell_type: [[op name, ...] per edge]}`` (every op where the space is unrestricted)."""
        return {
            t: [[self.ops[k] for k in self.edge_ops(t, e)] for e in range(self.num_edges)]
            for t in self.cell_types
        }

    def op_index(self, name: str) -> int:
        try:
            return self.ops.index(name)
        except ValueError:
            raise ConfigError(f"op {name!r} is not in this space; its ops are {list(self.ops)}") from None

    def without_ops(self, excluded: tuple[str, ...] | list[str]) -> DartsSpace:
        """The same space with some ops removed (Paganucci, 2020, section 3.4: excluding any op); candidate
        sets keep their remaining ops."""
        for op in excluded:
            self.op_index(op)
        kept = tuple(op for op in self.ops if op not in set(excluded))
        space = DartsSpace(kept, self.num_nodes, self.multiplier, self.num_normal_types, self.name)
        if not self.candidates:
            return space
        sets = {
            t: [
                [self.ops[k] for k in self.edge_ops(t, e) if self.ops[k] in kept]
                for e in range(self.num_edges)
            ]
            for t in self.cell_types
        }
        return space.with_candidates(sets)
