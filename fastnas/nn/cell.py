"""The search cell of the DARTS supernet (REFERENCE.md section 1)."""

from __future__ import annotations

import torch
from torch import nn

from fastnas.nn.executor import CellExecutor, ReferenceExecutor
from fastnas.nn.mixed import MixedEdge
from fastnas.ops import FactorizedReduce, ReLUConvBN
from fastnas.spaces import DartsSpace


class SearchCell(nn.Module):
    """A cell holding a mixed edge from every earlier state to every intermediate node.

    Inputs are the outputs of cells k-2 (``c_prev_prev`` channels) and k-1 (``c_prev``); they are
    preprocessed to ``channels`` (FactorizedReduce when the previous cell was a reduction). In a
    reduction cell the edges leaving the two inputs have stride 2. The output concatenates the last
    ``space.multiplier`` states.
    """

    def __init__(
        self,
        space: DartsSpace,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        executor: CellExecutor | None = None,
    ):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = space.num_nodes
        self.concat = space.concat
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(channels, 2 if reduction and edge.source < 2 else 1, space.ops) for edge in space.edges
        )
        self.executor: CellExecutor = executor or ReferenceExecutor()

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = self.executor(self, self.preprocess0(s0), self.preprocess1(s1), weights)
        return torch.cat([states[i] for i in self.concat], dim=1)
