"""The NAS-Bench-201 cell space (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020).

Four nodes (node 0 input, node 3 output), one edge ``j <- i`` for every ``i < j`` (6 edges, in the
arch-string order), the 5 ops of :data:`NB201_OPS`, one cell type (``"cell"``) shared by all cells.
Its derivation rule, the benchmark's per-edge argmax over all ops (``none`` included), is
:func:`fastnas.algorithms.derivation.derive_nb201`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastnas.errors import ConfigError
from fastnas.nb201.arch import NB201_EDGES, NB201_NUM_NODES, NB201_OPS
from fastnas.ops import get_op_spec


@dataclass(frozen=True)
class NB201Edge:
    """Edge ``index`` of an NB201 cell: from node ``source`` into node ``node`` (target, 1..3)."""

    index: int
    source: int
    node: int


@dataclass(frozen=True)
class NB201Space:
    """The NAS-Bench-201 space.

    Args:
        ops: candidate op names in alpha-column order (default and normal use: all 5 NB201 ops;
            a subset is allowed, the derived arch then only uses those).
        num_nodes: nodes per cell, input (0) and output (3) included; fixed at 4.
    """

    ops: tuple[str, ...] = NB201_OPS
    num_nodes: int = NB201_NUM_NODES
    name: str = field(default="nb201", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.num_nodes != NB201_NUM_NODES:
            raise ConfigError(
                f"the NAS-Bench-201 cell has a fixed topology of {NB201_NUM_NODES} nodes "
                f"(input, two intermediate, output), got num_nodes={self.num_nodes}"
            )
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"duplicate ops in the NB201 space: {list(self.ops)}")
        for op in self.ops:
            if op not in NB201_OPS:
                raise ConfigError(f"op {op!r} is not a NAS-Bench-201 op; they are: {', '.join(NB201_OPS)}")
            get_op_spec(op)
        if all(get_op_spec(op).kind == "zero" for op in self.ops):
            raise ConfigError("the search space needs at least one op other than 'none'")

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def edges(self) -> tuple[NB201Edge, ...]:
        return tuple(NB201Edge(k, source, node) for k, (source, node) in enumerate(NB201_EDGES))

    @property
    def num_edges(self) -> int:
        return len(NB201_EDGES)

    @property
    def cell_types(self) -> tuple[str, ...]:
        """One cell type: every cell of the supernet shares the same [6, num_ops] weights."""
        return ("cell",)

    def op_index(self, name: str) -> int:
        try:
            return self.ops.index(name)
        except ValueError:
            raise ConfigError(f"op {name!r} is not in this space; its ops are {list(self.ops)}") from None


__all__ = ["NB201Edge", "NB201Space"]
