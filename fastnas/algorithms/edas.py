"""EDAS (Hong, Ahn & Kim, "EDAS: Efficient and Differentiable Architecture Search", arXiv 2019): one
relaxed edge per iteration, every other edge discrete.

Every iteration samples one edge; that edge runs the softmax mixture of its ops (Hong et al. 2019, Eq. 2,
first case), every other edge runs only the op of its largest alpha (Eq. 2, ``o_m``), and only the sampled
edge's alphas are updated by the gradient. The supernet runs under an active set (:meth:`EDAS.active_set`):
the ops an unsampled edge does not run are never called, so a step costs about one discrete network plus
one mixed edge. Which edge is sampled is a pure function of (the run's sampling seed, epoch, step), so a
resumed run samples exactly what an uninterrupted one does.

Warm-up ("EDAS-inv", Eq. 3): during the first ``warmup_epochs`` (10) epochs the signs of all
alphas are inverted (the mixture is ``softmax(-alpha)`` and the discrete edges take the op of the largest
``-alpha``), and the alphas have weight decay 1e-3 (0 afterwards, section 4.1). *The paper is ambiguous on
how often*: section 3.2 says the parameters are inverted "alternately" / "periodically", sections 4.1
and 5.3 "for every iteration" / "for each iteration" of the first epochs. ``inversion_period = 0`` (the
default) inverts on every warm-up iteration (sections 4.1, 5.3, where the published numbers come from);
``P > 0`` alternates blocks of ``P`` iterations, inverted first (iterations ``s`` of an epoch with
``(s // P)`` even are inverted).

*Weight decay and the unsampled edges* (section 4.1: the decay is removed after the warm-up so that
the unselected edges' alphas are not updated by it; during the warm-up it is 1e-3, as in DARTS): during
the warm-up the decay acts on *every* edge's alpha, sampled or not. The discrete edges' weights are
one-hot constants, so their alphas get a zero gradient (:meth:`EDAS.extra_arch_loss` keeps every alpha
tensor in the graph, so the gradient is a zero tensor, never None); the architecture Adam's L2
``weight_decay`` adds ``wd * alpha`` to that gradient, and the update moves the alpha. Nothing is restored
during the warm-up. After the warm-up nothing moves an unsampled edge: ``freeze_unsampled`` (default on)
restores the unsampled edges' alphas after each update (Adam's moments alone would still move them).
``sample``: the paper numbers the edges of both cells 1-28 (Figure 5) without saying whether one edge is
sampled per cell type or one among all: ``per-cell-type`` (default) samples one edge in each cell type,
``all`` one edge among all.

In evaluation mode every edge runs its argmax op (the derived network inside the supernet). Published
settings (:attr:`EDAS.defaults`, section 4.1): one-shot network of 20 cells, batch 64, 25 epochs, SGD
0.025 cosine to 0.001, Adam lr 0.025 betas (0.5, 0.999). Derivation: the DARTS rule (Liu, Simonyan &
Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, section 2.4; NAS-Bench-201: its argmax).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults
from fastnas.algorithms.darts import candidate_masks, init_alphas, init_scale_option, masked_softmax
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.algorithms.options import MethodOptions, option
from fastnas.errors import ConfigError
from fastnas.spaces.base import SearchSpace

__all__ = ["EDAS", "EDASOptions", "EdgeSample", "sampled_edges"]


@dataclass(frozen=True)
class EDASOptions(MethodOptions):
    """Options of EDAS (the points Hong et al. 2019 leave open are options; see the module docstring)."""

    sample: Literal["per-cell-type", "all"] = option(
        "per-cell-type",
        "which edges are relaxed each step: one per cell type, or one among the edges of all cell types",
        flag="--edas-sample",
    )
    warmup_epochs: int = option(10, "epochs with inverted alphas (EDAS-inv, Eq. 3) at the start", ge=0)
    inversion_period: int = option(
        0, "0: invert on every warm-up iteration; P > 0: alternate blocks of P iterations", ge=0
    )
    warmup_arch_weight_decay: float = option(1e-3, "alpha weight decay during the warm-up (0 after)", ge=0)
    freeze_unsampled: bool = option(
        True, "after the warm-up, restore the alphas of unsampled edges after each update"
    )
    init_scale: float = init_scale_option()


@dataclass(frozen=True)
class EdgeSample:
    """One step's draw: the relaxed edge of each cell type (None: none in that type), the sign, and
    whether the step is in the warm-up (every alpha decays, none is restored; Hong et al. 2019, 4.1)."""

    edges: dict[str, int | None]
    inverted: bool
    warmup: bool = False


def sampled_edges(
    seed: int, epoch: int, step: int, cell_types: tuple[str, ...], num_edges: int, mode: str
) -> dict[str, int | None]:
    """The relaxed edge per cell type at (``epoch``, ``step``): a pure function of its arguments."""
    digest = hashlib.sha256(f"fastnas.edas:{seed}:{epoch}:{step}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    if mode == "all":
        pick = rng.randrange(num_edges * len(cell_types))
        return {t: (pick % num_edges if i == pick // num_edges else None) for i, t in enumerate(cell_types)}
    return {t: rng.randrange(num_edges) for t in cell_types}


class EDAS(SearchAlgorithm):
    """EDAS: ``EDAS(space)``; the loop calls :meth:`on_step` before every iteration."""

    name = "edas"
    leaves_weights_unused = True  # a step runs a sub-graph: DDP finds the unused weights
    samples_subgraphs = True  # drawn on the host in on_step: no compiled or captured step
    Options = EDASOptions
    defaults = SearchDefaults(
        epochs=25, batch_size=64, layers=20, arch_lr=0.025, arch_weight_decay=0.0
    )  # Hong et al. 2019, section 4.1
    options: EDASOptions

    def __init__(self, space: SearchSpace, options: EDASOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.alphas = init_alphas(self.space, self.options.init_scale)
        masks = candidate_masks(self.space)
        self.masked = masks is not None
        self._host_masks = masks or {}  # CPU copies: building an active set never reads the device
        for t, mask in self._host_masks.items():
            self.register_buffer(f"candidates_{t}", mask.clone(), persistent=False)
        #: the run's sampling seed (drawn from the torch RNG, kept in the checkpoint)
        self.sample_seed = int(torch.randint(0, 2**62, ()).item())
        self.sample: EdgeSample | None = None
        self._choice: dict[str, torch.Tensor] = {}  # argmax op per edge (device), fixed for the step
        self._active: dict[str, torch.Tensor] = {}  # host masks of the step
        self._before: dict[str, torch.Tensor] = {}  # alphas before a post-warm-up update (freeze)
        self._epoch = 0
        self._eval_key: tuple[int, ...] | None = None  # alphas' versions and storage

    # -------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        return {"sample_seed": self.sample_seed}

    def set_extra_state(self, state: Any) -> None:
        self.sample_seed = int(state["sample_seed"])
        self._eval_key = None

    def train(self, mode: bool = True) -> EDAS:
        """Every switch of mode recomputes the evaluation argmax (alphas written behind autograd's back,
        e.g. through ``.data``, do not change their version counter)."""
        self._eval_key = None
        return super().train(mode)

    def mask(self, cell_type: str) -> torch.Tensor | None:
        return getattr(self, f"candidates_{cell_type}") if self.masked else None

    # -------------------------------------------------------------- schedule
    @classmethod
    def check_schedule(cls, options: Any, epochs: int) -> None:
        """A warm-up (``warmup_epochs``) that covers every search epoch leaves no epoch in which the
        alphas are trained with their own sign: refused."""
        warmup = options.warmup_epochs
        if warmup >= epochs:
            raise ConfigError(
                f"option warmup_epochs (--warmup-epochs) {warmup} is not below --epochs {epochs}: the whole "
                "search would be the EDAS-inv warm-up (inverted alphas) and no epoch would train the "
                f"architecture itself; give --warmup-epochs below {epochs} (the published 10 is for 25 "
                "epochs)"
            )

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._epoch = epoch

    def arch_optimizer_settings(self, epoch: int) -> dict[str, float]:
        """Alpha weight decay 1e-3 during the warm-up (Hong et al. 2019, section 4.1); after it the run's
        ``arch_weight_decay`` (EDAS default 0)."""
        if epoch < self.options.warmup_epochs:
            return {"weight_decay": self.options.warmup_arch_weight_decay}
        return {}

    def inverted(self, epoch: int, step: int) -> bool:
        """Whether iteration ``step`` of ``epoch`` uses ``-alpha`` (Eq. 3)."""
        if epoch >= self.options.warmup_epochs:
            return False
        period = self.options.inversion_period
        return period == 0 or (step // period) % 2 == 0

    # -------------------------------------------------------------- sampling
    def on_step(self, epoch: int, step: int) -> None:
        """Draw the relaxed edge(s) and fix every edge's argmax op for this iteration (one host read)."""
        edges = sampled_edges(
            self.sample_seed, epoch, step, self.space.cell_types, self.space.num_edges, self.options.sample
        )
        self._draw(EdgeSample(edges, self.inverted(epoch, step), epoch < self.options.warmup_epochs))

    def _signed(self, cell_type: str, sign: float) -> torch.Tensor:
        alpha = self.alphas[cell_type].detach() * sign
        mask = self.mask(cell_type)
        return alpha if mask is None else alpha.masked_fill(~mask, float("-inf"))

    def _draw(self, sample: EdgeSample) -> None:
        sign = -1.0 if sample.inverted else 1.0
        choice = {t: self._signed(t, sign).argmax(-1) for t in self.space.cell_types}
        host = torch.stack(list(choice.values())).cpu()  # the one synchronisation of the step
        active = {}
        for i, t in enumerate(self.space.cell_types):
            rows = F.one_hot(host[i], self.space.num_ops).bool()
            edge = sample.edges[t]
            if edge is not None:
                rows[edge] = self._host_masks[t][edge] if self.masked else True
            active[t] = rows
        self.sample, self._choice, self._active = sample, choice, active
        self._before = (
            {t: a.detach().clone() for t, a in self.alphas.items()} if self._freezes(sample) else {}
        )

    def _freezes(self, sample: EdgeSample) -> bool:
        """Whether the unsampled edges' alphas are restored after this step's update: after the warm-up
        only (during it the weight decay acts on every alpha; Hong et al. 2019, section 4.1)."""
        return self.options.freeze_unsampled and not sample.warmup

    def _ensure_sample(self) -> None:
        if self.sample is None:  # a user loop that never calls model.start_step
            self.on_step(self._epoch, 0)

    def after_arch_step(self) -> None:
        """After the warm-up, keep the unsampled edges' alphas as they were (``freeze_unsampled``); during
        the warm-up leave the update (the weight decay of every alpha) in place."""
        if self.sample is None or not self._freezes(self.sample) or not self._before:
            return
        with torch.no_grad():
            for t, alpha in self.alphas.items():
                edge = self.sample.edges[t]
                keep = torch.ones(alpha.shape[0], 1, dtype=torch.bool, device=alpha.device)
                if edge is not None:
                    keep[edge] = False
                alpha.copy_(torch.where(keep, self._before[t], alpha))

    def _eval_choice(self) -> dict[str, torch.Tensor]:
        """Argmax ops of the current alphas (evaluation), recomputed only when the alphas change."""
        key = tuple(v for a in self.alphas.values() for v in (a._version, a.data_ptr()))
        if key != self._eval_key:
            self._eval_choice_cache = {t: self._signed(t, 1.0).argmax(-1) for t in self.space.cell_types}
            host = torch.stack(list(self._eval_choice_cache.values())).cpu()
            self._eval_active = {
                t: F.one_hot(host[i], self.space.num_ops).bool() for i, t in enumerate(self.space.cell_types)
            }
            self._eval_key = key
        return self._eval_choice_cache

    # -------------------------------------------------------------- weights
    def active_set(self) -> dict[str, torch.Tensor]:
        if not self.training:
            self._eval_choice()
            return self._eval_active
        self._ensure_sample()
        return self._active

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """One-hot rows on the argmax op; the sampled edge's row is ``softmax(+-alpha)`` (Eq. 2, 3)."""
        if not self.training:
            choice = self._eval_choice()
            return {t: F.one_hot(choice[t], self.space.num_ops).to(a.dtype) for t, a in self.alphas.items()}
        self._ensure_sample()
        assert self.sample is not None
        sign = -1.0 if self.sample.inverted else 1.0
        out = {}
        for t, alpha in self.alphas.items():
            weights = F.one_hot(self._choice[t], self.space.num_ops).to(alpha.dtype)
            edge = self.sample.edges[t]
            if edge is not None:
                mask = self.mask(t)
                relaxed = masked_softmax(sign * alpha[edge], None if mask is None else mask[edge])
                row = torch.zeros(alpha.shape[0], 1, dtype=torch.bool, device=alpha.device)
                row[edge] = True
                weights = torch.where(row, relaxed.unsqueeze(0), weights)
            out[t] = weights
        return out

    def extra_arch_loss(self) -> torch.Tensor | None:
        """``0 * sum(alpha)``: a zero term that keeps every alpha tensor in the upper-level graph. An
        unsampled edge's op runs alone (its weight never enters the graph), so without it a cell type
        with no sampled edge (``sample="all"``) would get no gradient, and Adam skips a parameter without
        one: its warm-up weight decay would not act (Hong et al. 2019, section 4.1)."""
        return 0.0 * torch.stack([a.sum() for a in self.alphas.values()]).sum()

    def recorded_weights(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha)`` of every edge (what the derivation ranks; step weights are mostly one-hot)."""
        return {t: masked_softmax(a.detach(), self.mask(t)) for t, a in self.alphas.items()}

    def derive(self) -> Architecture:
        """The DARTS rule on ``softmax(alpha)`` (NAS-Bench-201: its per-edge argmax)."""
        with torch.no_grad():
            weights = {t: masked_softmax(a, self.mask(t)) for t, a in self.alphas.items()}
            return derive_space_rule(self.space, weights)
