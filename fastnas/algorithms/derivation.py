"""Derivation rules: from continuous edge weights to a discrete cell."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fastnas.genotype import CellGenotype, Genotype
from fastnas.spaces import DartsSpace


def derive_darts_cell(weights: torch.Tensor, space: DartsSpace, inputs_per_node: int = 2) -> CellGenotype:
    """DARTS rule (REFERENCE.md section 1): per node, rank the incoming edges by their largest weight
    among ops other than ``none``, keep the top ``inputs_per_node``, and on each kept edge take the op with
    the largest weight other than ``none``. Ties keep the lower index (as the DARTS code's stable sort).

    Args:
        weights: [num_edges, num_ops] normalised edge weights (e.g. softmax(alpha)).
    """
    if weights.shape != (space.num_edges, space.num_ops):
        raise ValueError(f"weights must be [{space.num_edges}, {space.num_ops}], got {list(weights.shape)}")
    w = weights.detach().double().cpu()
    candidates = [k for k, name in enumerate(space.ops) if name != "none"]
    nodes = []
    offset = 0
    for node in range(space.num_nodes):
        n_in = node + 2
        rows = w[offset : offset + n_in][:, candidates]
        best_val, best_idx = [], []
        for r in rows.tolist():
            k_best = max(range(len(r)), key=lambda k, r=r: (r[k], -k))
            best_idx.append(candidates[k_best])
            best_val.append(r[k_best])
        order = sorted(range(n_in), key=lambda i: (-best_val[i], i))[: min(inputs_per_node, n_in)]
        nodes.append(tuple((space.ops[best_idx[i]], i) for i in order))
        offset += n_in
    return CellGenotype(nodes=tuple(nodes), concat=space.concat)


def derive_darts(weights: Mapping[str, torch.Tensor], space: DartsSpace) -> Genotype:
    """Apply :func:`derive_darts_cell` to every cell type of ``space``."""
    normals = [derive_darts_cell(weights[t], space) for t in space.normal_types]
    return Genotype.from_cells(normals, derive_darts_cell(weights["reduce"], space))
