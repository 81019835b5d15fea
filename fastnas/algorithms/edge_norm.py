"""Edge normalisation, a switch of several methods (``--edge-norm``), from PC-DARTS (Xu, Xie, Zhang, Chen,
Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search",
ICLR 2020).

Every edge ``(i, j)`` gets a parameter ``beta``; node ``j`` weighs its incoming edges by ``softmax_i(beta)``
over them, and the weight of op ``k`` on the edge becomes ``softmax(beta_j)_i * w_ijk`` (``w`` the method's
own op weights). The product is what the supernet receives (a partial-channel edge scales its bypass by
the row sum, i.e. by the edge weight, as PC-DARTS' code scales the whole edge output) and what the
derivation ranks, so the DARTS rule multiplies edge weight and op weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fastnas.spaces.base import SearchSpace

__all__ = ["EdgeNormalisation", "edge_weights", "node_membership"]


def node_membership(nodes: Sequence[int]) -> torch.Tensor:
    """Bool ``[num_nodes, num_edges]``: row ``n`` marks the edges into the ``n``-th distinct node."""
    return torch.tensor([[node == target for node in nodes] for target in dict.fromkeys(nodes)])


def edge_weights(betas: torch.Tensor, nodes: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Per edge ``e`` into node ``nodes[e]``: ``softmax`` of ``betas`` over the edges into that node.
    ``nodes`` may be given as its :func:`node_membership` (on the device: no host copy per call)."""
    membership = nodes if isinstance(nodes, torch.Tensor) else node_membership(nodes).to(betas.device)
    logits = betas.unsqueeze(0).masked_fill(~membership, float("-inf"))
    return torch.softmax(logits, dim=1).sum(0)  # each edge enters exactly one node


class EdgeNormalisation(nn.Module):
    """The betas of every cell type (``betas.<cell type>``, ``init_scale * randn``) and the product rule."""

    membership: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, space: SearchSpace, init_scale: float) -> None:
        super().__init__()
        self.betas = nn.ParameterDict(
            {t: nn.Parameter(init_scale * torch.randn(space.num_edges)) for t in space.cell_types}
        )
        nodes = [edge.node for edge in space.edges]
        self.register_buffer("membership", node_membership(nodes), persistent=False)

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """``softmax`` over each node's incoming edges, per cell type."""
        return {t: edge_weights(b, self.membership) for t, b in self.betas.items()}

    def weigh(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every edge's op-weight row times the edge's weight."""
        edges = self.edge_weights()
        return {t: w * edges[t].unsqueeze(-1).to(w.dtype) for t, w in weights.items()}
