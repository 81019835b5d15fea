"""The search cell of the DARTS supernet (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019) and the reference loop that runs it.

A cell owns its modules; an executor decides how to run them (:class:`CellExecutor`). The reference
executor is the plain loop of the papers (node j = sum over earlier states i of the mixed edge (i, j); Eq. 1
of Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of
Differentiable Neural Architecture Search", CVPR 2021); a fused executor (batched edges, fused weighted
sum, :mod:`fastnas.nn.fast_executor`) plugs in through the same interface and must give the same numbers.
``active`` (EDAS, DDSAS): a bool mask ``[num_edges, num_ops]`` of the (edge, op) pairs that run this step;
inactive ops are never called (:meth:`fastnas.nn.MixedEdge.forward`). None = every op.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from fastnas.nn.mixed import MixedEdge, PartialChannels
from fastnas.nn.skeleton import CellPlan, preprocessors
from fastnas.spaces import DartsSpace


class CellExecutor(Protocol):
    """Computes all states of ``cell`` from the preprocessed inputs and the edge weights [E, K]."""

    name: str

    def __call__(
        self,
        cell: SearchCell,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        active: torch.Tensor | None = None,
    ) -> list[torch.Tensor]: ...


class ReferenceExecutor:
    """The DARTS loop: node by node, a mixed op on every incoming edge, summed."""

    name = "reference"

    def __call__(
        self,
        cell: SearchCell,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        active: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        states = [s0, s1]
        offset = 0
        for _node in range(cell.num_nodes):
            node_sum = None
            for source, state in enumerate(states):
                e = offset + source
                y = cell.edges[e](state, weights[e], None if active is None else active[e])
                node_sum = y if node_sum is None else node_sum + y
            offset += len(states)
            assert node_sum is not None  # every node reads the two cell inputs
            states.append(node_sum)
        return states


class SearchCell(nn.Module):
    """A cell holding a mixed edge from every earlier state to every intermediate node.

    With per-edge candidate sets (:meth:`~fastnas.spaces.DartsSpace.with_candidates`) each edge holds and
    runs only its candidates; it still reads the whole weight row of the space's ops. The two inputs are
    preprocessed to ``plan.channels`` (:func:`~fastnas.nn.skeleton.preprocessors`,
    BN without affine parameters); in a reduction cell the edges leaving them have stride 2. The output
    concatenates the last ``space.multiplier`` states.
    """

    def __init__(
        self,
        space: DartsSpace,
        plan: CellPlan,
        executor: CellExecutor | None = None,
        partial: PartialChannels | None = None,
    ):
        super().__init__()
        self.reduction = plan.reduction
        self.num_nodes = space.num_nodes
        self.concat = space.concat
        self.multiplier = space.multiplier
        self.preprocess0, self.preprocess1 = preprocessors(plan, affine=False)
        partial = partial or PartialChannels()
        self.edges = nn.ModuleList(
            self._edge(space, plan, edge.index, edge.source, partial) for edge in space.edges
        )
        self.executor: CellExecutor = executor or ReferenceExecutor()

    @staticmethod
    def _edge(
        space: DartsSpace, plan: CellPlan, index: int, source: int, partial: PartialChannels
    ) -> MixedEdge:
        """The mixed edge over the edge's candidate ops (every op unless the space restricts it)."""
        stride = plan.edge_stride(source)
        if not space.restricted:
            return MixedEdge(plan.channels, stride, space.ops, partial=partial)
        columns = space.edge_ops(plan.cell_type, index)
        ops = tuple(space.ops[k] for k in columns)
        return MixedEdge(plan.channels, stride, ops, columns=columns, partial=partial)

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        states = self.executor(self, self.preprocess0(s0), self.preprocess1(s1), weights, active)
        return torch.cat([states[i] for i in self.concat], dim=1)
