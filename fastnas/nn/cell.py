"""The search cell of the DARTS supernet (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019)."""

from __future__ import annotations

import torch
from torch import nn

from fastnas.nn.executor import CellExecutor, ReferenceExecutor
from fastnas.nn.mixed import MixedEdge, PartialChannels
from fastnas.nn.skeleton import CellPlan, preprocessors
from fastnas.spaces import DartsSpace


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
