"""Derivation rules: from continuous edge weights to a discrete architecture.

- :func:`derive_darts` (REFERENCE.md section 1): per node the top-2 incoming edges by their strongest
  op other than ``none``, that op on each.
- :func:`derive_nb201` (section 10): NAS-Bench-201's per-edge argmax over all ops, ``none`` allowed.
- :func:`derive_space_rule`: the rule of the space (DARTS rule on DARTS spaces, argmax on NB201).

Every rule refuses non-finite weights (:class:`~fastnas.errors.NonFiniteError`): a diverged search
must not write a genotype that looks valid.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fastnas.errors import NonFiniteError
from fastnas.genotype import CellGenotype, Genotype
from fastnas.nb201.arch import NB201Arch
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace
from fastnas.spaces.nb201 import NB201Space

__all__ = ["check_finite", "derive_darts", "derive_darts_cell", "derive_nb201", "derive_space_rule"]


def check_finite(weights: torch.Tensor, cell_type: str) -> None:
    """Raise :class:`NonFiniteError` naming the first edge whose weights are NaN or infinite."""
    bad = ~torch.isfinite(weights.detach())
    if bool(bad.any()):
        edge = int(bad.any(dim=-1).nonzero()[0, 0]) if bad.dim() > 1 else 0
        raise NonFiniteError(
            f"the architecture weights of the {cell_type} cell are not finite (edge {edge}: "
            f"{weights[edge].detach().cpu().tolist()}); the search diverged - lower the learning rates or "
            "resume from an earlier checkpoint"
        )


def _argmax_first(values: list[float]) -> int:
    """Index of the largest value; ties keep the lower index."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


def derive_darts_cell(
    weights: torch.Tensor, space: DartsSpace, inputs_per_node: int = 2, cell_type: str = "cell"
) -> CellGenotype:
    """DARTS rule (REFERENCE.md section 1): per node, rank the incoming edges by their largest weight
    among ops other than ``none``, keep the top ``inputs_per_node``, and on each kept edge take the op with
    the largest weight other than ``none``. Ties keep the lower index (as the DARTS code's stable sort).

    Args:
        weights: [num_edges, num_ops] normalised edge weights (e.g. softmax(alpha)).
    """
    if weights.shape != (space.num_edges, space.num_ops):
        raise ValueError(f"weights must be [{space.num_edges}, {space.num_ops}], got {list(weights.shape)}")
    check_finite(weights, cell_type)
    w = weights.detach().double().cpu()
    candidates = [k for k, name in enumerate(space.ops) if name != "none"]
    nodes = []
    offset = 0
    for node in range(space.num_nodes):
        n_in = node + 2
        rows = w[offset : offset + n_in][:, candidates]
        best_val, best_idx = [], []
        for r in rows.tolist():
            k_best = _argmax_first(r)
            best_idx.append(candidates[k_best])
            best_val.append(r[k_best])
        order = sorted(range(n_in), key=lambda i: (-best_val[i], i))[: min(inputs_per_node, n_in)]
        nodes.append(tuple((space.ops[best_idx[i]], i) for i in order))
        offset += n_in
    return CellGenotype(nodes=tuple(nodes), concat=space.concat)


def derive_darts(weights: Mapping[str, torch.Tensor], space: DartsSpace) -> Genotype:
    """Apply :func:`derive_darts_cell` to every cell type of ``space``."""
    normals = [derive_darts_cell(weights[t], space, cell_type=t) for t in space.normal_types]
    return Genotype.from_cells(normals, derive_darts_cell(weights["reduce"], space, cell_type="reduce"))


def derive_nb201(weights: Mapping[str, torch.Tensor] | torch.Tensor, space: NB201Space) -> NB201Arch:
    """Per-edge argmax over all ops (``none`` allowed, ties -> lower column), as NAS-Bench-201 does.

    ``weights`` is ``{"cell": Tensor[6, num_ops]}`` (alphas or their softmax: same argmax).
    """
    w = weights if isinstance(weights, torch.Tensor) else weights["cell"]
    if tuple(w.shape) != (space.num_edges, space.num_ops):
        raise ValueError(
            f"NB201 weights must have shape ({space.num_edges}, {space.num_ops}), got {tuple(w.shape)}"
        )
    check_finite(w, "cell")
    rows = w.detach().to("cpu", torch.float64).tolist()
    return NB201Arch(tuple(space.ops[row.index(max(row))] for row in rows))


def derive_space_rule(space: SearchSpace, weights: Mapping[str, torch.Tensor]) -> Genotype | NB201Arch:
    """The derivation rule of ``space``: the DARTS rule, or NAS-Bench-201's argmax."""
    if isinstance(space, DartsSpace):
        return derive_darts(weights, space)
    if isinstance(space, NB201Space):
        return derive_nb201(weights, space)
    raise TypeError(f"no derivation rule for the space {space.name!r}")
