"""What every search space provides to supernets and methods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn


class SearchSpace(Protocol):
    """A search space: candidate ops, the edges of a cell, the cell types that own architecture
    parameters, how to build its supernet, and its own derivation convention."""

    name: str
    ops: tuple[str, ...]

    @property
    def num_ops(self) -> int: ...

    @property
    def num_edges(self) -> int: ...

    @property
    def cell_types(self) -> tuple[str, ...]: ...

    def derive(self, weights: Mapping[str, torch.Tensor]) -> Any:
        """The discrete architecture of normalised edge weights ``{cell_type: [num_edges, num_ops]}``."""
        ...

    def build_supernet(
        self, C: int, layers: int, num_classes: int, in_channels: int, executor: str = "reference"
    ) -> nn.Module: ...
