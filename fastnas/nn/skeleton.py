"""The DARTS macro skeleton, shared by every DARTS-space network (Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019, and its public code).

A stem, ``layers`` cells with reductions at ``layers // 3`` and ``2 * layers // 3`` (where the channel
count doubles), an optional auxiliary head after cell ``2 * layers // 3``, global average pooling and a
linear classifier. Cell ``k`` reads the outputs of cells ``k-2`` and ``k-1``, preprocessed to its width
(:func:`preprocessors`: FactorizedReduce after a reduction, else ReLU-Conv1x1-BN). What differs between
the search supernet, the EnTranNAS supernet and the evaluation networks is only the cell, which
:class:`DartsSkeleton` gets from a ``make_cell(plan)`` callback.

Stems: ``"cifar"`` = Conv3x3(in -> 3C) + BN, first cell with ``reduction_prev=False``;
``"imagenet"`` = stem0 (Conv3x3 s2 -> C/2, BN, ReLU, Conv3x3 s2 -> C, BN) and stem1 (ReLU, Conv3x3 s2,
BN), first cell with ``reduction_prev=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, SupportsInt, cast

import torch
from torch import nn

from fastnas.errors import ConfigError
from fastnas.ops import FactorizedReduce, ReLUConvBN

__all__ = [
    "STEMS",
    "CellPlan",
    "DartsSkeleton",
    "Stem",
    "cell_types_of",
    "normal_type_name",
    "preprocessors",
    "reduction_layers",
]

Stem = Literal["cifar", "imagenet"]
STEMS: tuple[Stem, ...] = ("cifar", "imagenet")


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the reduction cells: ``layers // 3`` and ``2 * layers // 3``."""
    return (layers // 3, 2 * layers // 3)


def normal_type_name(stage: int, num_normal_types: int) -> str:
    """The normal-cell type of ``stage`` (0-based, reductions so far): ``normal`` with one type;
    ``normal``, ``normal_2``, ``normal_3`` with one type per stage (Paganucci, "Efficient ConvNet
    Architectures: Differentiable Neural Architecture Search", semester thesis, ETH Zurich, 2020, section
    3.3.2)."""
    if num_normal_types == 1 or stage == 0:
        return "normal"
    return f"normal_{stage + 1}"


def cell_types_of(layers: int, num_normal_types: int) -> list[str]:
    """The cell type of every layer: ``reduce`` at the reductions, else the normal type of the stage."""
    reductions = reduction_layers(layers)
    out, stage = [], 0
    for index in range(layers):
        if index in reductions:
            stage += 1
            out.append("reduce")
        else:
            out.append(normal_type_name(stage, num_normal_types))
    return out


@dataclass(frozen=True)
class CellPlan:
    """Where a cell sits in the skeleton and the widths it connects."""

    index: int
    cell_type: str  # "normal", "normal_2", "normal_3" or "reduce"
    stage: int  # reductions before this cell (a reduction cell counts itself)
    reduction: bool
    reduction_prev: bool
    c_prev_prev: int  # channels of the output of cell k-2
    c_prev: int  # channels of the output of cell k-1
    channels: int  # width of every state inside the cell

    @classmethod
    def standalone(
        cls,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool = False,
        reduction_prev: bool = False,
    ) -> CellPlan:
        """The plan of a cell used on its own (tests, examples): index 0, stage 0."""
        cell_type = "reduce" if reduction else "normal"
        return cls(0, cell_type, 0, reduction, reduction_prev, c_prev_prev, c_prev, channels)

    def edge_stride(self, source: int) -> int:
        """Stride of an op reading state ``source``: 2 from the cell inputs of a reduction cell."""
        return 2 if self.reduction and source < 2 else 1


def preprocessors(plan: CellPlan, affine: bool) -> tuple[nn.Module, nn.Module]:
    """``(preprocess0, preprocess1)`` of a cell: the two inputs brought to ``plan.channels``."""
    if plan.reduction_prev:
        pre0: nn.Module = FactorizedReduce(plan.c_prev_prev, plan.channels, affine=affine)
    else:
        pre0 = ReLUConvBN(plan.c_prev_prev, plan.channels, 1, 1, 0, affine=affine)
    return pre0, ReLUConvBN(plan.c_prev, plan.channels, 1, 1, 0, affine=affine)


class DartsSkeleton(nn.Module):
    """Stem, cells, optional auxiliary head, global pooling and classifier.

    Args:
        make_cell: builds the cell of a :class:`CellPlan`; the cell must have an int attribute
            ``multiplier`` (how many states its output concatenates), which sets the next widths.
        num_normal_types: 1, or 3 (one normal-cell type per stage, Paganucci, 2020).
        stem: ``"cifar"`` or ``"imagenet"`` (see the module docstring).
        auxiliary_head: builds the auxiliary head from the channel count after cell ``2*layers//3``.
    """

    def __init__(
        self,
        C: int,
        layers: int,
        num_classes: int,
        in_channels: int,
        make_cell: Callable[[CellPlan], nn.Module],
        *,
        num_normal_types: int = 1,
        stem: Stem = "cifar",
        stem_multiplier: int = 3,
        auxiliary_head: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if layers < 3:
            raise ConfigError(f"a DARTS network needs at least 3 layers (two are reductions), got {layers}")
        if C < 1 or num_classes < 1 or in_channels < 1:
            raise ConfigError(
                f"C, num_classes and in_channels must be positive, got {C}, {num_classes}, {in_channels}"
            )
        if num_normal_types not in (1, 3):
            raise ConfigError(
                f"a DARTS network has 1 normal-cell type or 3 (one per stage), got {num_normal_types}"
            )
        self.C, self.layers, self.num_classes = C, layers, num_classes
        self.stem_kind: Stem = stem
        if stem == "cifar":
            c_stem = stem_multiplier * C
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
            )
            reduction_prev = False
        elif stem == "imagenet":
            if C % 2:
                raise ConfigError(f"the ImageNet stem needs an even C (its first conv has C/2 channels): {C}")
            c_stem = C
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False),  # s0 also feeds cell 0: do not overwrite it
                nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            reduction_prev = True
        else:
            raise ConfigError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")
        self.cells = nn.ModuleList()
        self.cell_types = cell_types_of(layers, num_normal_types)
        self.aux_position = 2 * layers // 3
        c_pp, c_p, channels, stage, c_aux = c_stem, c_stem, C, 0, 0
        for index, cell_type in enumerate(self.cell_types):
            reduction = cell_type == "reduce"
            if reduction:
                channels *= 2
                stage += 1
            plan = CellPlan(index, cell_type, stage, reduction, reduction_prev, c_pp, c_p, channels)
            cell = make_cell(plan)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, int(cast(SupportsInt, cell.multiplier)) * channels
            if index == self.aux_position:
                c_aux = c_p
        self.auxiliary_head: nn.Module | None = auxiliary_head(c_aux) if auxiliary_head else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def stem_states(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs of the first cell."""
        if self.stem_kind == "imagenet":
            s0 = self.stem0(x)
            return s0, self.stem1(s0)
        s = self.stem(x)
        return s, s

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the last cell's output (global average pooling, then the linear classifier)."""
        return self.classifier(self.global_pooling(features).flatten(1))

    def forward_cells(
        self, x: torch.Tensor, run_cell: Callable[[nn.Module, str, torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits, with ``run_cell(cell, cell_type, s0, s1)`` computing each cell's output."""
        s0, s1 = self.stem_states(x)
        for cell, cell_type in zip(self.cells, self.cell_types, strict=True):
            s0, s1 = s1, run_cell(cell, cell_type, s0, s1)
        return self.classify(s1)
