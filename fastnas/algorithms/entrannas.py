"""EnTranNAS and EnTranNAS-DST (seed 002, sections 2.2-2.5; REFERENCE.md section 6).

**EnTranNAS**: edge weights ``p = softmax(alpha / tau)`` (Eq. 5), tau annealed per epoch
(``tau = tau0 * tau_decay ** epoch``; CIFAR-10: tau0 = 5.0, decay 0.923). The supernet
(:class:`~fastnas.nn.entrannas.EnTranNASSupernet`) runs Engine-cells on ``p`` and Transit-cells on the
architecture the DARTS rule derives from ``p`` at every iteration (Eq. 4); :meth:`EnTranNAS.derive` is
that rule.

**EnTranNAS-DST**: per intermediate node ``j`` (all ``(i, k)`` into it, ``none`` excluded),

- Eq. 7  ``p_hat = p / max_{i<j, k} p``,
- Eq. 8  ``t_j = sigmoid(beta_j)``, ``q = ReLU(p_hat - t_j)``,
- Eq. 9  ``q_hat = q / sum_k q`` on every edge with a non-zero ``q`` (edges with all ``q = 0`` stay 0),
- Eq. 10 ``S_j = {(i, k): q_hat > 0}``: the Engine-cells use ``q_hat``, Transit-cells and the genotype
  ``S_j`` (any number of inputs per node),
- Eq. 11 upper-level loss ``+ lam * mean_j(-log t_j)`` (:meth:`EnTranNASDST.extra_arch_loss`).

At least one input per node is guaranteed: the largest ``p_hat`` is exactly 1 and ``t_j`` is clamped
below 1 (``sigmoid`` rounds to 1.0 in float32 for ``beta >~ 17``; the clamp keeps ``t_j < 1`` as the
seed's argument needs). DST has no ``none`` op: it is removed from the given space (the standard space
then has the seed's 7 ops, the extended one 12).

Published search hyper-parameters (:attr:`EnTranNAS.defaults`, CIFAR-10): 50 epochs, batch 512, 8 cells,
C=16, SGD lr 0.2 cosine to 0, momentum 0.9, wd 3e-4; Adam for alpha (and beta) lr 6e-4, betas
(0.5, 0.999), wd 1e-3. ImageNet (:data:`IMAGENET_DEFAULTS`; searched after three stride-2 stem convs to
28x28): batch 1024, lr 0.5, arch lr 6e-3, otherwise as CIFAR; EnTranNAS tau as CIFAR, DST tau0 = 1
annealed by 0.9 (pass ``tau0=1.0, tau_decay=0.9``). The gradient clip (5) is not stated by the seed;
it is DARTS'.

Supernet options (Table 3 ablation): ``engine_cells``, ``feature_sharing``, ``bottleneck`` are
:attr:`supernet_options`: ``SearchModel.build`` (and so the search loop and the CLI flags
``--engine-cells``, ``--no-feature-sharing``, ``--bottleneck``) hands them to
:meth:`EnTranNAS.build_supernet`; the defaults are the published ones (first cells as Engines,
sharing on, ratio 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.algorithms.base import SearchAlgorithm, SearchDefaults
from fastnas.genotype import CellGenotype, Genotype
from fastnas.ops import get_op_spec
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace

if TYPE_CHECKING:
    from fastnas.nn.entrannas import EnTranNASSupernet, TransitRule

__all__ = [
    "CIFAR_DEFAULTS",
    "IMAGENET_DEFAULTS",
    "EnTranNAS",
    "EnTranNASDST",
    "dst_weights",
    "temperature",
]

CIFAR_DEFAULTS = SearchDefaults(
    epochs=50,
    batch_size=512,
    C=16,
    layers=8,
    lr=0.2,
    lr_min=0.0,
    momentum=0.9,
    weight_decay=3e-4,
    grad_clip=5.0,
    arch_lr=6e-4,
    arch_betas=(0.5, 0.999),
    arch_weight_decay=1e-3,
)
"""Seed 002 section 4 (CIFAR-10 search)."""

IMAGENET_DEFAULTS = CIFAR_DEFAULTS.updated(batch_size=1024, lr=0.5, arch_lr=6e-3)
"""Seed 002 section 4 (direct ImageNet search; DST there uses tau0 = 1, decay 0.9)."""


def temperature(epoch: int, tau0: float, decay: float) -> float:
    """Eq. 5 temperature at ``epoch`` (0-based): ``tau0 * decay ** epoch``."""
    return tau0 * decay**epoch


def _check_darts_space(space: SearchSpace, method: str) -> DartsSpace:
    if not isinstance(space, DartsSpace):
        raise TypeError(f"{method} searches a DARTS cell space (darts or darts-extended), got {space.name!r}")
    return space


class EnTranNAS(SearchAlgorithm):
    """EnTranNAS (seed 002 sections 2.2-2.3): tempered softmax weights, DARTS-rule derivation.

    Args:
        space: a DARTS cell space.
        tau0, tau_decay: Eq. 5 temperature schedule (CIFAR-10: 5.0, 0.923 per epoch).
        order: 1 (first order, the seed's setting) or 2 (DARTS unrolled; supported by the loop).
        init_scale: alpha initialisation ``init_scale * randn`` (DARTS).
    """

    name = "entrannas"
    defaults = CIFAR_DEFAULTS
    supernet_options = ("engine_cells", "feature_sharing", "bottleneck")
    transit_rule: TransitRule = "top2"

    def __init__(
        self,
        space: SearchSpace,
        tau0: float = 5.0,
        tau_decay: float = 0.923,
        order: int = 1,
        init_scale: float = 1e-3,
    ):
        space = self._prepare_space(_check_darts_space(space, self.name))
        super().__init__(space)
        if tau0 <= 0 or not 0 < tau_decay <= 1:
            raise ValueError(f"need tau0 > 0 and 0 < tau_decay <= 1, got tau0={tau0}, tau_decay={tau_decay}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        self.order = order
        self.tau0, self.tau_decay = float(tau0), float(tau_decay)
        self.register_buffer("tau", torch.tensor(self.tau0))
        shape = (space.num_edges, space.num_ops)
        self.alphas = nn.ParameterDict(
            {cell_type: nn.Parameter(init_scale * torch.randn(shape)) for cell_type in space.cell_types}
        )

    @classmethod
    def _prepare_space(cls, space: DartsSpace) -> DartsSpace:
        return space

    @classmethod
    def build_supernet(
        cls,
        space: SearchSpace,
        C: int,
        layers: int,
        num_classes: int,
        in_channels: int,
        executor: str = "reference",
        engine_cells: str | Sequence[int] = "first",
        feature_sharing: bool = True,
        bottleneck: int = 4,
    ) -> EnTranNASSupernet:
        """The Engine/Transit supernet (Figure 4). ``executor`` must be ``reference`` (the cells run
        their own sparse loop)."""
        from fastnas.nn.entrannas import EnTranNASSupernet

        if executor != "reference":
            raise ValueError(f"{cls.name} cells have their own executor; got executor={executor!r}")
        return EnTranNASSupernet(
            cls._prepare_space(_check_darts_space(space, cls.name)),
            C=C,
            layers=layers,
            num_classes=num_classes,
            in_channels=in_channels,
            engine_cells=engine_cells,
            feature_sharing=feature_sharing,
            bottleneck=bottleneck,
            transit_rule=cls.transit_rule,
        )

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.tau.fill_(temperature(epoch, self.tau0, self.tau_decay))

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Eq. 5: ``softmax(alpha / tau)`` per edge."""
        return {t: torch.softmax(a / self.tau, dim=-1) for t, a in self.alphas.items()}

    def arch_weights(self) -> dict[str, torch.Tensor]:
        return self.probabilities()

    def derive(self) -> Genotype:
        with torch.no_grad():
            return self.space.derive(self.arch_weights())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau0={self.tau0}, tau_decay={self.tau_decay}"


def dst_weights(
    p: torch.Tensor, beta: torch.Tensor, space: DartsSpace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7-9 for one cell type: ``(p_hat, q, q_hat)``, each ``[num_edges, num_ops]``.

    Args:
        p: Eq. 5 probabilities ``[num_edges, num_ops]`` (rows sum to 1).
        beta: ``[num_nodes]`` threshold parameters, ``t_j = sigmoid(beta_j)`` (Eq. 8).
    """
    if p.shape != (space.num_edges, space.num_ops):
        raise ValueError(f"p must be [{space.num_edges}, {space.num_ops}], got {list(p.shape)}")
    if beta.shape != (space.num_nodes,):
        raise ValueError(f"beta must be [{space.num_nodes}], got {list(beta.shape)}")
    node_of_edge = torch.tensor([e.node for e in space.edges], device=p.device)
    p = p.float()
    # Eq. 7: per node, the max over every (i, k) into it.
    node_max = torch.stack([p[node_of_edge == j].amax() for j in range(space.num_nodes)])
    p_hat = p / node_max[node_of_edge].unsqueeze(1)
    # Eq. 8: t_j < 1 strictly (sigmoid saturates to 1.0 in floating point).
    t = torch.sigmoid(beta.float()).clamp(max=1.0 - torch.finfo(torch.float32).eps)
    q = F.relu(p_hat - t[node_of_edge].unsqueeze(1))
    # Eq. 9 on the edges with a non-zero q; the others stay exactly zero.
    denom = q.sum(dim=1, keepdim=True)
    q_hat = torch.where(denom > 0, q / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(q))
    return p_hat, q, q_hat


class EnTranNASDST(EnTranNAS):
    """EnTranNAS-DST (seed 002 section 2.4): differentiable sparsification and topology search.

    Args:
        lam: lambda of Eq. 11 (the seed uses 0.05, 0.1, 0.2; default 0.1, its CIFAR video setting).
        beta_init: initial ``beta_j`` (the seed does not give it; 0 = threshold 0.5, so at the start,
            with near-uniform ``p``, every connection is kept, as the seed describes).
        tau0, tau_decay, order, init_scale: as :class:`EnTranNAS`.
    """

    name = "entrannas-dst"
    transit_rule: TransitRule = "nonzero"

    def __init__(
        self,
        space: SearchSpace,
        lam: float = 0.1,
        beta_init: float = 0.0,
        tau0: float = 5.0,
        tau_decay: float = 0.923,
        order: int = 1,
        init_scale: float = 1e-3,
    ):
        super().__init__(space, tau0=tau0, tau_decay=tau_decay, order=order, init_scale=init_scale)
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        self.lam = float(lam)
        self.betas = nn.ParameterDict(
            {
                t: nn.Parameter(torch.full((self.space.num_nodes,), float(beta_init)))
                for t in self.space.cell_types
            }
        )

    @classmethod
    def _prepare_space(cls, space: DartsSpace) -> DartsSpace:
        zero_ops = tuple(op for op in space.ops if get_op_spec(op).kind == "zero")
        return space.without_ops(zero_ops) if zero_ops else space

    def thresholds(self) -> dict[str, torch.Tensor]:
        """``t_j = sigmoid(beta_j)`` per cell type (Eq. 8, before the < 1 clamp)."""
        return {t: torch.sigmoid(b) for t, b in self.betas.items()}

    def arch_weights(self) -> dict[str, torch.Tensor]:
        p = self.probabilities()
        return {t: dst_weights(p[t], self.betas[t], self.space)[2] for t in self.space.cell_types}

    def extra_arch_loss(self) -> torch.Tensor | None:
        """Eq. 11: ``lam * mean_j(-log t_j)`` for each cell type (summed over the cell types, each
        type being one searched cell); ``-log sigmoid(b) = softplus(-b)`` for stability."""
        if self.lam == 0:
            return None
        return self.lam * sum(F.softplus(-b).mean() for b in self.betas.values())

    def derive(self) -> Genotype:
        """Eq. 10: every ``(i, k)`` with ``q_hat > 0``, ordered by source then op."""
        with torch.no_grad():
            weights = self.arch_weights()
        cells = {t: self._derive_cell(weights[t]) for t in self.space.cell_types}
        return Genotype.from_cells([cells[t] for t in self.space.normal_types], cells["reduce"])

    def _derive_cell(self, q_hat: torch.Tensor) -> CellGenotype:
        positive = (q_hat.detach() > 0).cpu()
        nodes: list[list[tuple[str, int]]] = [[] for _ in range(self.space.num_nodes)]
        for edge in self.space.edges:
            for k in positive[edge.index].nonzero().flatten().tolist():
                nodes[edge.node].append((self.space.ops[k], edge.source))
        return CellGenotype(nodes=tuple(tuple(n) for n in nodes), concat=self.space.concat)

    def arch_entropy(self) -> dict[str, float]:
        """Mean per-edge entropy of ``softmax(alpha / tau)`` (``q_hat`` has all-zero rows)."""
        out = {}
        for t, p in self.probabilities().items():
            p = p.detach().float().clamp_min(1e-12)
            out[t] = float(-(p * p.log()).sum(-1).mean())
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lam={self.lam}"
