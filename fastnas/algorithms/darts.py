"""DARTS (Liu et al., ICLR 2019): softmax-relaxed mixed ops, first- or second-order bilevel search.

Edge weights are softmax(alpha) over the ops of each edge (seed 002 Eq. 2); one alpha matrix
[num_edges, num_ops] per cell type, initialised ``1e-3 * randn`` (REFERENCE.md section 1). The
architecture gradient is first order, or second order through a virtual weight step (DARTS Eq. 6-8,
see :mod:`fastnas.algorithms.architect`). Derivation: the rule of the space (the DARTS rule; on
NAS-Bench-201 its per-edge argmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.algorithms.options import MethodOptions, option
from fastnas.spaces.base import SearchSpace

__all__ = ["DARTS", "DARTSOptions", "init_alphas"]


@dataclass(frozen=True)
class DARTSOptions(MethodOptions):
    """Options of DARTS. ``order=1`` is the DARTS code's default (``--unrolled`` off); the published
    best cell (DARTS_V2) came from ``order=2``."""

    order: Literal[1, 2] = option(1, "architecture gradient: 1 = first order, 2 = second order (unrolled)")
    init_scale: float = option(1e-3, "alphas start as init_scale * randn", ge=0)


def init_alphas(space: SearchSpace, scale: float) -> nn.ParameterDict:
    """One ``[num_edges, num_ops]`` alpha matrix per cell type, ``scale * randn`` (DARTS)."""
    shape = (space.num_edges, space.num_ops)
    return nn.ParameterDict({t: nn.Parameter(scale * torch.randn(shape)) for t in space.cell_types})


class DARTS(SearchAlgorithm):
    """DARTS, first or second order (``DARTS(space, order=2)``)."""

    name = "darts"
    Options = DARTSOptions
    defaults = SearchDefaults()  # REFERENCE.md section 2
    options: DARTSOptions

    def __init__(self, space: SearchSpace, options: DARTSOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.order = self.options.order
        self.alphas = init_alphas(self.space, self.options.init_scale)

    def arch_weights(self) -> dict[str, torch.Tensor]:
        return {cell_type: torch.softmax(alpha, dim=-1) for cell_type, alpha in self.alphas.items()}

    def derive(self) -> Architecture:
        with torch.no_grad():
            return derive_space_rule(self.space, self.arch_weights())
