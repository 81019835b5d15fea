"""The DARTS search supernet (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import cast

import torch

from fastnas.nn.cell import SearchCell
from fastnas.nn.executor import build_executor
from fastnas.nn.mixed import MixedEdge, PartialChannels
from fastnas.nn.skeleton import DartsSkeleton, Stem
from fastnas.nn.supernet_options import SupernetOptions, SupernetShape, supernet_options_class
from fastnas.spaces import DartsSpace


class Supernet(DartsSkeleton):
    """DARTS ``Network``: the :class:`~fastnas.nn.skeleton.DartsSkeleton` with a :class:`SearchCell`
    per layer.

    Architecture weights are not module parameters: the search algorithm owns them and passes the
    per-cell-type edge weights ``{cell_type: Tensor[num_edges, num_ops]}`` to :meth:`forward`.
    With several normal-cell types (Paganucci, "Efficient ConvNet Architectures: Differentiable
    Neural Architecture Search", semester thesis, ETH Zurich, 2020, section 3.3.2), stage ``s`` (after
    ``s`` reductions) uses type ``space.normal_types[s]``. ``stem="imagenet"`` gives the three stride-2
    stem convolutions of the DARTS ImageNet network.
    """

    def __init__(
        self,
        space: DartsSpace | None = None,
        C: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        executor: str | None = None,
        stem: Stem = "cifar",
        partial: PartialChannels | None = None,
        options: SupernetOptions | None = None,
    ):
        """``executor`` and ``partial`` override ``options`` (default: :class:`SupernetOptions`' defaults)."""
        space = space or DartsSpace()
        options = options or supernet_options_class()()
        if executor is not None:
            options = dataclasses.replace(options, executor=executor)
        if partial is None:
            partial = options.partial
        shared_executor = build_executor(options.executor, options)
        super().__init__(
            C,
            layers,
            num_classes,
            in_channels,
            lambda plan: SearchCell(space, plan, shared_executor, partial),
            num_normal_types=space.num_normal_types,
            stem=stem,
            stem_multiplier=stem_multiplier,
        )
        self.space = space
        self.supernet_options = options
        self.executor_name = options.executor

    @classmethod
    def from_shape(cls, space: DartsSpace, shape: SupernetShape) -> Supernet:
        """The supernet of ``shape`` (sizes and options)."""
        return cls(
            space,
            C=shape.C,
            layers=shape.layers,
            num_classes=shape.num_classes,
            in_channels=shape.in_channels,
            stem=shape.stem,
            options=shape.options,
        )

    def set_executor(self, name: str) -> None:
        """Switch every cell to executor ``name`` (outputs must not change)."""
        executor = build_executor(name, self.supernet_options)
        for cell in self.cells:
            cast(SearchCell, cell).executor = executor
        self.supernet_options = dataclasses.replace(self.supernet_options, executor=name)
        self.executor_name = name

    def set_skip_dropout(self, rate: float) -> None:
        """Dropout on every edge's identity ``skip_connect`` output in training mode (P-DARTS)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"skip dropout rate must be in [0, 1), got {rate}")
        for cell in self.cells:
            for edge in cast(SearchCell, cell).edges:
                cast(MixedEdge, edge).skip_dropout = float(rate)

    def forward(
        self,
        x: torch.Tensor,
        weights: Mapping[str, torch.Tensor],
        active: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits under ``weights``; with ``active`` (host bool masks per cell type) only active ops run."""
        if active is None:
            return self.forward_cells(x, lambda cell, t, s0, s1: cell(s0, s1, weights[t]))
        return self.forward_cells(x, lambda cell, t, s0, s1: cell(s0, s1, weights[t], active[t]))
