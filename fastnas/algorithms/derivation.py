"""Derivation rules: from continuous edge weights to a discrete architecture.

- :func:`derive_darts` (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019,
  section 2.4): per node the top-2 incoming edges by their strongest op other than ``none``, that op on
  each.
- :func:`derive_nb201` (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
  Architecture Search", ICLR 2020): the per-edge argmax over all ops, ``none`` allowed.
- :func:`grouped_weights` (Paganucci, "Efficient ConvNet Architectures: Differentiable Neural
  Architecture Search", semester thesis, ETH Zurich, 2020, section 3.5): discretisation by grouping,
  before the DARTS rule.
- :func:`derive_space_rule`: the rule of the space (DARTS rule on DARTS spaces, argmax on NB201).
- :func:`arch_cosine_distance` (Yang et al., "DDSAS: Dynamic and Differentiable Space-Architecture
  Search", ACML 2021, appendix B.5): how far apart two derived architectures are.

Every rule refuses non-finite weights (:class:`~fastnas.errors.NonFiniteError`): a diverged search
must not write a genotype that looks valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from fastnas.errors import ConfigError, NonFiniteError
from fastnas.genotype import CellGenotype, Genotype
from fastnas.nb201.arch import NB201Arch
from fastnas.ops import get_op_spec
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace
from fastnas.spaces.nb201 import NB201Space

__all__ = [
    "GROUPS",
    "DerivationRule",
    "arch_cosine_distance",
    "arch_one_hot",
    "check_finite",
    "derive_darts",
    "derive_darts_cell",
    "derive_nb201",
    "derive_space_rule",
    "grouped_weights",
]


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


DerivationRule = Literal["darts", "grouping"]
"""``darts``: the DARTS rule; ``grouping``: discretisation by grouping (Paganucci 2020, section 3.5), then
the DARTS rule."""

GROUPS = ("zero", "skip", "pool", "conv")
"""The op groups of discretisation by grouping (Paganucci 2020, section 3.5: none / skip / pool / conv),
in the thesis' order, which is also the tie order of :func:`grouped_weights`: the op kinds of the
registry."""


def grouped_weights(weights: torch.Tensor, space: DartsSpace, cell_type: str = "cell") -> torch.Tensor:
    """Paganucci 2020, section 3.5, per edge: the group (none / skip / pool / conv) with the highest summed
    weight over the edge's candidates wins, its best op gets that summed weight, every other op 0.

    The thesis writes the sum over alpha; fastnas sums the normalised edge weights (softmax(alpha)), the
    quantity the DARTS rule ranks (the derivation never sees raw alphas).

    Ties (the thesis leaves them open; fastnas fixes them, so the result is deterministic):

    - a group's sum is exact-rounded (:func:`math.fsum`), so it does not depend on the order the ops are
      listed in the space;
    - equal group sums: the group first in :data:`GROUPS` (none, skip, pool, conv) wins, as an argmax
      over the groups in the thesis' order;
    - equal op weights inside the winning group: the lowest op index (column) wins, as in the DARTS rule.
    """
    w = weights.detach().double().cpu()
    out = torch.zeros_like(w)
    kinds = [get_op_spec(op).kind for op in space.ops]
    for e in range(space.num_edges):
        allowed = _allowed(space, cell_type, e)
        scores = {g: math.fsum(float(w[e, k]) for k in allowed if kinds[k] == g) for g in GROUPS}
        present = [g for g in GROUPS if any(kinds[k] == g for k in allowed)]
        group = max(present, key=lambda g: (scores[g], -GROUPS.index(g)))
        members = [k for k in allowed if kinds[k] == group]
        best = max(members, key=lambda k: (float(w[e, k]), -k))
        out[e, best] = scores[group]
    return out


def _allowed(space: DartsSpace, cell_type: str, edge: int) -> tuple[int, ...]:
    return space.edge_ops(cell_type, edge) if space.restricted else tuple(range(space.num_ops))


def derive_darts_cell(
    weights: torch.Tensor,
    space: DartsSpace,
    inputs_per_node: int = 2,
    cell_type: str = "cell",
    rule: DerivationRule = "darts",
) -> CellGenotype:
    """DARTS rule (Liu et al. 2019, section 2.4): per node, rank the incoming edges by their largest weight
    among ops other than ``none``, keep the top ``inputs_per_node``, and on each kept edge take the op with
    the largest weight other than ``none``. Ties keep the lower index (as the DARTS code's stable sort).

    Only an edge's candidate ops are considered on a space with per-edge candidate sets. With
    ``rule="grouping"`` the rule runs on :func:`grouped_weights`; ties there (edges whose winning group is
    ``none`` rank with weight 0) are broken by the original weights.

    Args:
        weights: [num_edges, num_ops] normalised edge weights (e.g. softmax(alpha)).
    """
    if weights.shape != (space.num_edges, space.num_ops):
        raise ValueError(f"weights must be [{space.num_edges}, {space.num_ops}], got {list(weights.shape)}")
    if rule not in ("darts", "grouping"):
        raise ValueError(f"unknown derivation rule {rule!r}; use 'darts' or 'grouping'")
    check_finite(weights, cell_type)
    original = weights.detach().double().cpu().tolist()
    primary = grouped_weights(weights, space, cell_type).tolist() if rule == "grouping" else original
    zero = {k for k, name in enumerate(space.ops) if get_op_spec(name).kind == "zero"}
    nodes = []
    for node in range(space.num_nodes):
        keys = []  # per incoming edge: (strength, tie-break, op)
        for edge in (e for e in space.edges if e.node == node):
            ops = [k for k in _allowed(space, cell_type, edge.index) if k not in zero]
            k_best = max(ops, key=lambda k: (primary[edge.index][k], original[edge.index][k], -k))
            keys.append((primary[edge.index][k_best], original[edge.index][k_best], k_best))
        order = sorted(range(len(keys)), key=lambda i: (-keys[i][0], -keys[i][1], i))[:inputs_per_node]
        nodes.append(tuple((space.ops[keys[i][2]], i) for i in order))
    return CellGenotype(nodes=tuple(nodes), concat=space.concat)


def derive_darts(
    weights: Mapping[str, torch.Tensor], space: DartsSpace, rule: DerivationRule = "darts"
) -> Genotype:
    """Apply :func:`derive_darts_cell` to every cell type of ``space``."""
    cells = {t: derive_darts_cell(weights[t], space, cell_type=t, rule=rule) for t in space.cell_types}
    return Genotype.from_cells(
        [cells[t] for t in space.normal_types], cells["reduce"], allow_dangling=True
    )  # a derived cell may leave nodes out of a concat shorter than the nodes (multiplier < nodes)


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


def derive_space_rule(
    space: SearchSpace, weights: Mapping[str, torch.Tensor], rule: DerivationRule = "darts"
) -> Genotype | NB201Arch:
    """The derivation rule of ``space``: the DARTS rule (or grouping, then the DARTS rule), or
    NAS-Bench-201's argmax."""
    if isinstance(space, DartsSpace):
        return derive_darts(weights, space, rule)
    if isinstance(space, NB201Space):
        if rule != "darts":
            raise ConfigError(
                f"derivation rule {rule!r} applies to DARTS spaces; NAS-Bench-201 takes its argmax"
            )
        return derive_nb201(weights, space)
    raise TypeError(f"no derivation rule for the space {space.name!r}")


def arch_one_hot(arch: Genotype | NB201Arch) -> frozenset[tuple[object, ...]]:
    """The positions of the ones in an architecture's one-hot encoding: ``(cell, node, input, op)`` per
    chosen edge of a genotype, ``(edge, op)`` per edge of an NB201 cell (Yang et al. 2021, DDSAS,
    appendix B.5)."""
    if isinstance(arch, NB201Arch):
        return frozenset(enumerate(arch.ops))
    return frozenset(
        (cell_name, node, source, op)
        for cell_name, cell in arch.cells
        for node, pairs in enumerate(cell.nodes)
        for op, source in pairs
    )


def arch_cosine_distance(first: Genotype | NB201Arch, second: Genotype | NB201Arch) -> float:
    """``1 - <a, b> / (|a| |b|)`` of the one-hot encodings (DDSAS, appendix B.5): 0 for the same
    architecture, 1 for architectures that share no (edge, op) choice."""
    a, b = arch_one_hot(first), arch_one_hot(second)
    if not a or not b:
        return 1.0
    return 1.0 - len(a & b) / math.sqrt(len(a) * len(b))
