"""EnTranNAS and EnTranNAS-DST (Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency,
Efficiency, and Flexibility of Differentiable Neural Architecture Search", CVPR 2021; sections 2.2-2.5).

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
- Eq. 11 upper-level loss ``+ lam * 1/(n-1) sum_j -log t_j``, a mean over the nodes
  (:meth:`EnTranNASDST.extra_arch_loss`).

At least one input per node is guaranteed: the largest ``p_hat`` is exactly 1 and ``t_j`` is clamped
below 1 (``sigmoid`` rounds to 1.0 in float32 for ``beta >~ 17``; the clamp keeps ``t_j < 1`` as the
paper's argument needs). DST has no ``none`` op: it is removed from the given space (the standard space
then has the paper's 7 ops, the extended one 12).

Published search hyper-parameters (:attr:`EnTranNAS.defaults`, CIFAR-10, section 4.2): 50 epochs,
batch 512, 8 cells, C=16, SGD lr 0.2 cosine to 0, momentum 0.9, wd 3e-4; Adam for alpha (and beta)
lr 6e-4, betas (0.5, 0.999), wd 1e-3. The gradient clip (5) is not stated by the paper; it is DARTS'.
The paper's ImageNet settings (section 4.3: batch 1024, lr 0.5, arch lr 6e-3; DST with tau0 = 1 decayed
by 0.9) are :data:`IMAGENET_DEFAULTS`, the defaults of ``--dataset imagenet``.

Options (:class:`EnTranNASOptions`, :class:`EnTranNASDSTOptions`) include the supernet's Table 3
ablation switches (``engine_cells``, ``feature_sharing``, ``bottleneck``), which
:func:`fastnas.nn.entrannas.build_entrannas_supernet` reads; the defaults are the published ones (first
cells as Engines, sharing on, ratio 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.algorithms.base import SearchAlgorithm, SearchDefaults
from fastnas.algorithms.darts import init_alphas, init_scale_option
from fastnas.algorithms.derivation import check_finite, derive_darts
from fastnas.algorithms.edge_norm import EdgeNormalisation
from fastnas.algorithms.options import SecondOrderOptions, check_arch_step_bn, option
from fastnas.errors import ConfigError
from fastnas.genotype import CellGenotype, Genotype
from fastnas.ops import get_op_spec
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace

__all__ = [
    "CIFAR_DEFAULTS",
    "ENGINE_CELL_KEYWORDS",
    "IMAGENET_DEFAULTS",
    "EnTranNAS",
    "EnTranNASDST",
    "EnTranNASDSTOptions",
    "EnTranNASOptions",
    "TransitRule",
    "dst_weights",
    "temperature",
]

TransitRule = Literal["top2", "nonzero"]
"""How Transit-cells derive their sub-graph: the DARTS rule (EnTranNAS, Eq. 4) or every pair with a
non-zero weight (EnTranNAS-DST, Eq. 10)."""

ENGINE_CELL_KEYWORDS = ("first", "last", "half", "all")

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
"""Yang et al. (CVPR 2021), section 4.2 (CIFAR-10 search)."""

IMAGENET_DEFAULTS = CIFAR_DEFAULTS.updated(batch_size=1024, lr=0.5, arch_lr=6e-3)
"""Yang et al. (CVPR 2021), section 4.3 (direct ImageNet search; DST there uses tau0 = 1, decay 0.9)."""


def temperature(epoch: int, tau0: float, decay: float) -> float:
    """Eq. 5 temperature at ``epoch`` (0-based): ``tau0 * decay ** epoch``."""
    return tau0 * decay**epoch


@dataclass(frozen=True)
class EnTranNASOptions(SecondOrderOptions):
    """Options of EnTranNAS: the Eq. 5 temperature schedule and the supernet's Table 3 switches."""

    tau0: float = option(5.0, "initial softmax temperature (Eq. 5)", gt=0)
    tau_decay: float = option(0.923, "temperature factor per epoch (Eq. 5)", gt=0, le=1)
    order: Literal[1, 2] = option(
        1, "architecture gradient: 1 = first order (the paper's), 2 = DARTS unrolled"
    )
    init_scale: float = init_scale_option()
    engine_cells: str = option(
        "first",
        "Engine-cells: first (Figure 4: first normal and first reduction cell), last, half, all, or cell "
        "indices like 0,2",
    )
    feature_sharing: bool = option(True, "op weights per source node (Eq. 6); off: per edge (Table 3)")
    bottleneck: int = option(
        4, "channel reduction ratio before the candidate ops (section 2.5; 0 = off)", ge=0
    )
    derive: Literal["darts", "grouping"] = option(
        "darts",
        "discretisation of the genotype and of the Transit-cells: the DARTS rule, or grouping by op kind "
        "first (Paganucci, 2020, section 3.5)",
    )
    edge_norm: bool = option(
        False,
        "edge normalisation (PC-DARTS): weigh each node's incoming edges by softmax(beta); the Engine-cells "
        "and the Transit-cells' derivation see edge weight x op weight",
    )

    def validate(self) -> None:
        spec = self.engine_cells.strip()
        if spec in ENGINE_CELL_KEYWORDS:
            return
        parts = [p.strip() for p in spec.split(",")]
        if not spec or not all(p.isdigit() for p in parts):
            raise ConfigError(
                f"option engine_cells (--engine-cells) must be one of {', '.join(ENGINE_CELL_KEYWORDS)} or "
                f"cell indices like 0,2; got {self.engine_cells!r}"
            )


@dataclass(frozen=True)
class EnTranNASDSTOptions(EnTranNASOptions):
    """Options of EnTranNAS-DST: EnTranNAS's, plus the Eq. 8 thresholds and the Eq. 11 regulariser.

    ``sparsity_mean``: the paper's Eq. 11 is ``lam * 1/(n-1) * sum_j -log t_j``, one mean over the nodes;
    with several searched cell types (normal and reduction) ``"all-nodes"`` (default) takes that one mean
    over the nodes of every type, ``"per-cell-type"`` sums one such mean per type (an earlier fastnas
    form: twice the effective lambda with one normal and one reduction cell).
    """

    lam: float = option(
        0.1, "sparsity regulariser lambda (Eq. 11; the paper uses 0.05, 0.1, 0.2)", flag="--lambda", ge=0
    )
    beta_init: float = option(
        0.0, "initial threshold parameter beta_j, t_j = sigmoid(beta_j) (Eq. 8; not given by the paper)"
    )
    sparsity_mean: Literal["all-nodes", "per-cell-type"] = option(
        "all-nodes",
        "Eq. 11 mean: one over the nodes of all cell types (the paper's) or one per cell type, summed",
    )

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        """The ImageNet search anneals from tau0 = 1 by 0.9 per epoch (Yang et al., CVPR 2021,
        section 4.3)."""
        return {"tau0": 1.0, "tau_decay": 0.9} if dataset == "imagenet" else {}

    def validate(self) -> None:
        super().validate()
        if self.edge_norm:
            raise ConfigError(
                "option edge_norm (--edge-norm) does not apply to entrannas-dst: its thresholds (Eq. 8) "
                "already normalise each node's connections"
            )
        if self.derive != "darts":
            raise ConfigError(
                "option derive (--derive) does not apply to entrannas-dst: its cells are the pairs its "
                "thresholds keep (Eq. 10)"
            )


def _check_darts_space(space: SearchSpace, method: str) -> DartsSpace:
    if not isinstance(space, DartsSpace):
        raise ConfigError(
            f"{method} searches a DARTS cell space (darts or darts-extended), got {space.name!r}"
        )
    return space


class EnTranNAS(SearchAlgorithm):
    """EnTranNAS (Yang et al., CVPR 2021, sections 2.2-2.3): tempered softmax weights, DARTS-rule
    derivation."""

    name = "entrannas"
    leaves_weights_unused = True  # a step runs a sub-graph: DDP finds the unused weights
    samples_subgraphs = True  # Transit-cells pick their inputs from the weights on the host every step
    Options = EnTranNASOptions
    defaults = CIFAR_DEFAULTS
    dataset_defaults: ClassVar[Mapping[str, SearchDefaults]] = {"imagenet": IMAGENET_DEFAULTS}
    transit_rule: TransitRule = "top2"
    options: EnTranNASOptions
    space: DartsSpace
    tau: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, space: SearchSpace, options: EnTranNASOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.order = self.options.order
        self.arch_step_bn = self.options.arch_step_bn
        check_arch_step_bn(self.order, self.arch_step_bn)
        self.tau0, self.tau_decay = self.options.tau0, self.options.tau_decay
        self.register_buffer("tau", torch.tensor(self.tau0))
        self.alphas = init_alphas(self.space, self.options.init_scale)
        self.edge_norm = (
            EdgeNormalisation(self.space, self.options.init_scale) if self.options.edge_norm else None
        )

    @classmethod
    def prepare_space(cls, space: SearchSpace) -> DartsSpace:
        return _check_darts_space(space, cls.name)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.tau.fill_(temperature(epoch, self.tau0, self.tau_decay))

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Eq. 5: ``softmax(alpha / tau)`` per edge."""
        return {t: torch.softmax(a / self.tau, dim=-1) for t, a in self.alphas.items()}

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """Eq. 5's ``p``, times the edge weight with ``edge_norm``."""
        p = self.probabilities()
        return p if self.edge_norm is None else self.edge_norm.weigh(p)

    def derive(self) -> Genotype:
        with torch.no_grad():
            return derive_darts(self.arch_weights(), self.space, self.options.derive)


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
    # NaN weights must stay NaN (a diverged search is reported as such), not turn into "no input": adding
    # 0 * denom is 0 for finite rows and NaN for the rows of a non-finite p, without a host sync
    return p_hat, q, q_hat + 0.0 * denom


class EnTranNASDST(EnTranNAS):
    """EnTranNAS-DST (Yang et al., CVPR 2021, section 2.4): differentiable sparsification and topology search.

    DST has no ``none`` op: :meth:`prepare_space` removes it from the given space (the standard space
    then has the paper's 7 ops, the extended one 12).
    """

    name = "entrannas-dst"
    Options = EnTranNASDSTOptions
    transit_rule: TransitRule = "nonzero"
    options: EnTranNASDSTOptions

    def __init__(self, space: SearchSpace, options: EnTranNASDSTOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.lam = self.options.lam
        beta_init = self.options.beta_init
        self.betas = nn.ParameterDict(
            {t: nn.Parameter(torch.full((self.space.num_nodes,), beta_init)) for t in self.space.cell_types}
        )

    @classmethod
    def prepare_space(cls, space: SearchSpace) -> DartsSpace:
        space = _check_darts_space(space, cls.name)
        zero_ops = tuple(op for op in space.ops if get_op_spec(op).kind == "zero")
        return space.without_ops(zero_ops) if zero_ops else space

    def thresholds(self) -> dict[str, torch.Tensor]:
        """``t_j = sigmoid(beta_j)`` per cell type (Eq. 8, before the < 1 clamp)."""
        return {t: torch.sigmoid(b) for t, b in self.betas.items()}

    def arch_weights(self) -> dict[str, torch.Tensor]:
        p = self.probabilities()
        return {t: dst_weights(p[t], self.betas[t], self.space)[2] for t in self.space.cell_types}

    def extra_arch_loss(self) -> torch.Tensor | None:
        """Eq. 11: ``lam * mean_j(-log t_j)`` (``-log sigmoid(b) = softplus(-b)`` for stability), one mean
        over the nodes of every cell type, or one per cell type summed (``sparsity_mean``)."""
        if self.lam == 0:
            return None
        per_node = [F.softplus(-b) for b in self.betas.values()]
        if self.options.sparsity_mean == "all-nodes":
            return self.lam * torch.cat(per_node).mean()
        return self.lam * torch.stack([v.mean() for v in per_node]).sum()

    def derive(self) -> Genotype:
        """Eq. 10: every ``(i, k)`` with ``q_hat > 0``, ordered by source then op."""
        with torch.no_grad():
            p = self.probabilities()
            for t, w in p.items():
                check_finite(w, t)
            weights = {t: dst_weights(p[t], self.betas[t], self.space)[2] for t in self.space.cell_types}
        cells = {t: self._derive_cell(weights[t]) for t in self.space.cell_types}
        return Genotype.from_cells(
            [cells[t] for t in self.space.normal_types], cells["reduce"], allow_dangling=True
        )  # a derived cell may leave nodes out of a concat shorter than the nodes (multiplier < nodes)

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
