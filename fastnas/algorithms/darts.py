"""DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019): softmax-relaxed
mixed ops, first- or second-order bilevel search.

Edge weights are softmax(alpha) over the ops of each edge (Eq. 2 in the notation of Yang, You, Li, Wang,
Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural
Architecture Search", CVPR 2021); one alpha matrix [num_edges, num_ops] per cell type, initialised
``1e-3 * randn`` (as in the DARTS code). The architecture gradient is first order, or second order
through a virtual weight step (Liu et al., 2019, Eq. 6-8,
see :mod:`fastnas.algorithms.architect`). Derivation: the rule of the space (the DARTS rule; on
NAS-Bench-201 its per-edge argmax). On a space with per-edge candidate sets the softmax runs over each
edge's candidates only (the alpha matrices keep the space's columns; removed ops weigh exactly 0).
``edge_norm`` adds PC-DARTS' edge normalisation (:mod:`fastnas.algorithms.edge_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.algorithms.edge_norm import EdgeNormalisation
from fastnas.algorithms.options import SecondOrderOptions, check_arch_step_bn, option
from fastnas.errors import ConfigError
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace

__all__ = [
    "DARTS",
    "INIT_SCALE_MAX",
    "DARTSOptions",
    "candidate_masks",
    "init_alphas",
    "init_scale_option",
    "masked_softmax",
]


INIT_SCALE_MAX = 1.0
"""The largest ``init_scale`` a method accepts. The alphas start as ``init_scale * randn`` (DARTS: 1e-3,
every op weighs about the same); over the 8 DARTS ops the largest op weight of an edge averages 0.36 at
scale 1, but 0.90 at scale 10, where about half the edges start with one op above 0.99: the softmax is
saturated from the start and its gradient nearly vanishes."""


def init_scale_option(what: str = "alphas") -> float:
    """The ``init_scale`` option (``--init-scale``) of the methods whose ``what`` start as
    ``init_scale * randn``: at least 0, at most :data:`INIT_SCALE_MAX`."""
    return option(
        1e-3,
        f"{what} start as init_scale * randn (DARTS: 1e-3); at most {INIT_SCALE_MAX:g}, since a larger "
        "scale starts the softmax over an edge's ops near one-hot, where its gradient vanishes",
        ge=0,
        le=INIT_SCALE_MAX,
        reason=(
            "a larger scale starts the softmax over an edge's ops saturated (near one-hot), where its "
            "gradient vanishes; the DARTS initialisation is 1e-3"
        ),
    )


@dataclass(frozen=True)
class DARTSOptions(SecondOrderOptions):
    """Options of DARTS. ``order=1`` is the DARTS code's default (``--unrolled`` off); the published
    best cell (DARTS_V2) came from ``order=2``."""

    order: Literal[1, 2] = option(1, "architecture gradient: 1 = first order, 2 = second order (unrolled)")
    init_scale: float = init_scale_option()
    derive: Literal["darts", "grouping"] = option(
        "darts", "discretisation: the DARTS rule, or grouping by op kind first (Paganucci, 2020, section 3.5)"
    )
    edge_norm: bool = option(
        False, "edge normalisation (PC-DARTS): weigh each node's incoming edges by softmax(beta)"
    )


def init_alphas(space: SearchSpace, scale: float) -> nn.ParameterDict:
    """One ``[num_edges, num_ops]`` alpha matrix per cell type, ``scale * randn`` (DARTS)."""
    shape = (space.num_edges, space.num_ops)
    return nn.ParameterDict({t: nn.Parameter(scale * torch.randn(shape)) for t in space.cell_types})


def candidate_masks(space: SearchSpace) -> dict[str, torch.Tensor] | None:
    """``{cell_type: bool [num_edges, num_ops]}`` of a space with per-edge candidate sets, else None."""
    if not isinstance(space, DartsSpace) or not space.restricted:
        return None
    return {t: torch.tensor(space.candidate_mask(t), dtype=torch.bool) for t in space.cell_types}


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """``softmax`` over the candidates only: a removed op gets weight exactly 0."""
    if mask is None:
        return torch.softmax(logits, dim=dim)
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=dim)


class DARTS(SearchAlgorithm):
    """DARTS, first or second order (``DARTS(space, order=2)``)."""

    name = "darts"
    Options = DARTSOptions
    defaults = SearchDefaults()  # the CIFAR-10 search settings of Liu et al. (2019)
    options: DARTSOptions

    def __init__(self, space: SearchSpace, options: DARTSOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.order = self.options.order
        self.arch_step_bn = self.options.arch_step_bn
        check_arch_step_bn(self.order, self.arch_step_bn)
        if self.options.derive != "darts" and not isinstance(self.space, DartsSpace):
            raise ConfigError(
                f"option derive (--derive) {self.options.derive!r} applies to DARTS spaces only"
            )
        self.alphas = init_alphas(self.space, self.options.init_scale)
        self._register_masks()
        self.edge_norm = (
            EdgeNormalisation(self.space, self.options.init_scale) if self.options.edge_norm else None
        )

    def _register_masks(self) -> None:
        """Per-edge candidate sets become masks (non-persistent buffers, on the model's device)."""
        self.masked = False
        for t, mask in (candidate_masks(self.space) or {}).items():
            self.register_buffer(f"candidates_{t}", mask, persistent=False)
            self.masked = True

    def mask(self, cell_type: str) -> torch.Tensor | None:
        """The candidate mask of ``cell_type`` (None: every op on every edge)."""
        return getattr(self, f"candidates_{cell_type}") if self.masked else None

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha)`` per edge (over its candidates), times the edge weight with ``edge_norm``."""
        weights = {t: masked_softmax(alpha, self.mask(t)) for t, alpha in self.alphas.items()}
        return weights if self.edge_norm is None else self.edge_norm.weigh(weights)

    def derive(self) -> Architecture:
        with torch.no_grad():
            return derive_space_rule(self.space, self.arch_weights(), self.options.derive)
