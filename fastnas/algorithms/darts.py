"""DARTS (Liu et al., ICLR 2019): softmax-relaxed mixed ops, first- or second-order bilevel search.

Edge weights are softmax(alpha) over the ops of each edge (seed 002 Eq. 2); one alpha matrix
[num_edges, num_ops] per cell type, initialised ``1e-3 * randn`` (REFERENCE.md section 1). The
architecture gradient is first order, or second order through a virtual weight step (DARTS Eq. 6-8,
see :mod:`fastnas.algorithms.architect`). Derivation: the DARTS rule.
"""

from __future__ import annotations

import torch
from torch import nn

from fastnas.algorithms.base import SearchAlgorithm, SearchDefaults
from fastnas.genotype import Genotype
from fastnas.spaces.base import SearchSpace


class DARTS(SearchAlgorithm):
    """DARTS with ``order=1`` (first order) or ``order=2`` (unrolled, second order).

    The default ``order=1`` follows the DARTS code's default (``--unrolled`` off); the published best
    cell (DARTS_V2) came from ``order=2``.
    """

    name = "darts"
    defaults = SearchDefaults()  # REFERENCE.md section 2

    def __init__(self, space: SearchSpace, order: int = 1, init_scale: float = 1e-3):
        super().__init__(space)
        if order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 (first order) or 2 (second order), got {order}")
        self.order = order
        shape = (space.num_edges, space.num_ops)
        self.alphas = nn.ParameterDict(
            {cell_type: nn.Parameter(init_scale * torch.randn(shape)) for cell_type in space.cell_types}
        )

    def arch_weights(self) -> dict[str, torch.Tensor]:
        return {cell_type: torch.softmax(alpha, dim=-1) for cell_type, alpha in self.alphas.items()}

    def derive(self) -> Genotype:
        with torch.no_grad():
            return self.space.derive(self.arch_weights())
