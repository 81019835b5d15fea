"""The DARTS search supernet (REFERENCE.md section 1)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fastnas.nn.cell import SearchCell
from fastnas.nn.executor import build_executor
from fastnas.spaces import DartsSpace


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3``."""
    return (layers // 3, 2 * layers // 3)


class Supernet(nn.Module):
    """DARTS ``Network``: stem, ``layers`` search cells, global pooling, linear classifier.

    Architecture weights are not module parameters: the search algorithm owns them and passes the
    per-cell-type edge weights ``{cell_type: Tensor[num_edges, num_ops]}`` to :meth:`forward`.
    With several normal-cell types (seed 004), stage ``s`` (after ``s`` reductions) uses type
    ``space.normal_types[s]``.
    """

    def __init__(
        self,
        space: DartsSpace | None = None,
        C: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        executor: str = "reference",
    ):
        super().__init__()
        self.space = space or DartsSpace()
        if layers < 3:
            raise ValueError(f"a DARTS supernet needs at least 3 layers (two are reductions), got {layers}")
        if self.space.num_normal_types not in (1, 3):
            raise ValueError("num_normal_types must be 1 or 3 (one normal-cell type per stage)")
        self.C, self.layers, self.num_classes = C, layers, num_classes
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        self.executor_name = executor
        shared_executor = build_executor(executor)
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        self.cell_types: list[str] = []
        reductions = reduction_layers(layers)
        reduction_prev, stage = False, 0
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
                stage += 1
            cell = SearchCell(self.space, c_pp, c_p, c_curr, reduction, reduction_prev, shared_executor)
            self.cells.append(cell)
            if reduction:
                self.cell_types.append("reduce")
            else:
                self.cell_types.append(self.space.normal_types[min(stage, self.space.num_normal_types - 1)])
            reduction_prev = reduction
            c_pp, c_p = c_p, self.space.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def set_executor(self, name: str) -> None:
        """Switch every cell to executor ``name`` (outputs must not change)."""
        executor = build_executor(name)
        for cell in self.cells:
            cell.executor = executor
        self.executor_name = name

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell, cell_type in zip(self.cells, self.cell_types, strict=True):
            s0, s1 = s1, cell(s0, s1, weights[cell_type])
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))
