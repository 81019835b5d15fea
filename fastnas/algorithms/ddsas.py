"""DDSAS: a dynamic subspace drawn by UCB, as the authors' public code runs it.

Yang, Hu, Lu, Sun, Mei, Zeng, Shi, Han & Li, "DDSAS: Dynamic and Differentiable Space-Architecture
Search", ACML 2021 (the paper, its appendix, and the authors' public MIT-licensed code, which produced the
published numbers: where the appendix and the code differ, fastnas follows the code).

- *Space parameters* ``beta`` (one per edge and op, like ``alpha``); space probability ``p = sigmoid(beta)``;
  alpha and beta are trained by one Adam.
- *Mixed op* over the active ops only (the others are never called): ``w = softmax(alpha | active) *
  sigmoid(beta)``, L1-normalised per edge (appendix Eq. 7, the "approximation" without which the gradients
  of ``p`` vanish, Eq. 13; ``weight_form="simple"``, the published runs). ``weight_form="all"`` multiplies
  instead by the product over the edge's ops of ``sigmoid(beta)`` where active and ``1 - sigmoid(beta)``
  elsewhere (the code's other form; after the L1 normalisation it is plain ``softmax(alpha | active)``).
- *Sampler state*, per cell type and (edge, op): a count ``n`` starting at **1** (a pseudo-count, so no
  pair has an infinite UCB) and a saliency ``s`` starting at 0; one resample counter ``N`` starting at 1.
- Every ``M`` steps (``resample_every``; at step 0 of every epoch and every ``M``-th step after it), first
  **update**, then **resample**:

  - update: with the subspace of the steps just run, ``w = softmax(alpha | active) * sigmoid(beta)``
    *not* normalised; for every active pair ``s <- (s n + w) / (n + 1)``, ``n <- n + 1`` (so the saliency
    is a running mean over resampling points); then ``UCB = sigmoid(beta) + c sqrt(ln N / n)`` for every
    pair (``c = 1.44``), then ``N <- N + 1``.
  - resample: clear the subspace; on each edge walk its available ops in descending UCB: a ``none`` met on
    the way is switched on without counting, and the walk stops at the first other op, which is switched
    on; then walk all (edge, op) pairs of the cell type in descending UCB and switch on available pairs
    until ``L - edges`` more pairs other than ``none`` are on (a ``none`` met is switched on, uncounted).
    ``L`` (``subspace_ops``, 28) counts pairs other than ``none``; ``none`` is active only where the walk
    meets it. Ties go to the lower op index on an edge and to the lower (edge, op) in row-major order over
    the table (the code sorts with an unstable sort; fastnas makes the order deterministic).
- *Derivation*: the DARTS rule (top-2 incoming edges by their strongest op other than ``none``, then that
  op) on ``saliency x availability`` (NAS-Bench-201: its per-edge argmax).
- *Space schedules* (``space_schedule``; the published runs take 60 epochs, the default then): ``shrink``
  removes, at the starts of epochs 11, 21, 31, 41 and 51 (the code's 0-based epochs 10, 20, ...), the 14
  least-salient available pairs per cell type, walking the whole table in ascending saliency and keeping
  one op per edge (two while the edge's ``none`` is available), 112 -> 98 -> ... -> 42 pairs. The code's
  threshold test compares a tensor with ``is True`` (always false) and counts each edge's ops once per
  shrink; fastnas applies the rule as stated, so an edge always keeps an op other than ``none``.
  ``expand`` makes the ops available in the order none, skip_connect, sep_conv_3x3, max_pool_3x3,
  dil_conv_3x3, avg_pool_3x3, sep_conv_5x5, dil_conv_5x5: the first 3 from the start, one more at the
  starts of epochs 11, 21, 31, 41, 51; ``expand-imagenet`` (the ImageNet search) starts with sep_conv_3x3,
  dil_conv_3x3, sep_conv_5x5, dil_conv_5x5 and adds the rest at epoch 41. ``schedule`` takes custom entries
  (``E:shrink=N``, ``E:add=op1+op2`` and fastnas's own ``E:keep=K``, which is not the paper's rule).
- *Options of the public code*: ``random_epochs`` (its ``--begin``: in the first epochs every step draws a
  random subspace, with no update), ``random_prob`` (its ``--rdss_prob``: at a resample, the probability
  of a random instead of a UCB subspace) and Gumbel-softmax weights with a temperature annealed linearly
  per epoch (``gumbel_tau``, off by default).

Every sampler state (``N``, ``n``, the saliency, the UCB, the subspace, the availability, the random
generator) is saved with the model, so a resumed run samples exactly what an uninterrupted one does; each
resample is recorded in ``sampling.jsonl`` (the op sampling counts of appendix figure 9).

Published settings (:attr:`DDSAS.defaults`): 50 epochs (60 with a space schedule), batch 64, SGD 0.025
cosine to 0.001, Adam lr 3e-4 betas (0.5, 0.999) for alpha and beta, weight decay 1e-3 (the public code's
default; the appendix text says 1e-4). On NAS-Bench-201 (6 edges x 4 ops other than ``none``) the paper does
not give ``L``; the default 28 would cover the whole space, so give e.g. ``--subspace-ops 12``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults
from fastnas.algorithms.darts import candidate_masks, init_alphas, init_scale_option, masked_softmax
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.algorithms.edge_norm import EdgeNormalisation
from fastnas.algorithms.options import MethodOptions, option
from fastnas.errors import ConfigError
from fastnas.ops import UnknownOpError, get_op_spec
from fastnas.spaces.base import SearchSpace

__all__ = [
    "DDSAS",
    "SPACE_SCHEDULES",
    "DDSASOptions",
    "ScheduleEntry",
    "draw_subspace",
    "parse_schedule",
    "shrink_available",
]

_ENTRY = re.compile(r"^\s*(\d+)\s*:\s*(keep|add|shrink)\s*=\s*(\S+)\s*$")

SPACE_SCHEDULES: Mapping[str, tuple[str, ...]] = {
    "static": (),
    "shrink": tuple(f"{e}:shrink=14" for e in (11, 21, 31, 41, 51)),
    "expand": (
        "11:add=max_pool_3x3",
        "21:add=dil_conv_3x3",
        "31:add=avg_pool_3x3",
        "41:add=sep_conv_5x5",
        "51:add=dil_conv_5x5",
    ),
    "expand-imagenet": ("41:add=none+skip_connect+max_pool_3x3+avg_pool_3x3",),
}
"""The public code's space configurations as schedule entries (epochs counted from 1)."""

SpaceSchedule = Literal["static", "shrink", "expand", "expand-imagenet"]


@dataclass(frozen=True)
class ScheduleEntry:
    """At the start of epoch ``epoch`` (1-based): remove the ``shrink`` least-salient pairs per cell type,
    keep ``keep`` ops per edge (not the paper's rule), or make the ops ``add`` available."""

    epoch: int
    keep: int | None = None
    add: tuple[str, ...] = ()
    shrink: int | None = None


def parse_schedule(entries: tuple[str, ...]) -> list[ScheduleEntry]:
    """``("11:shrink=14", "10:keep=4", "1:add=sep_conv_3x3+sep_conv_5x5")`` -> entries sorted by epoch."""
    parsed = []
    for text in entries:
        match = _ENTRY.match(text)
        if match is None:
            raise ConfigError(
                f"option schedule (--ddsas-schedule): bad entry {text!r}; write EPOCH:shrink=N (the N "
                "least-salient pairs of a cell type leave the space), EPOCH:add=op1+op2 (ops join the "
                "space) or EPOCH:keep=K (each edge keeps its K most salient ops), e.g. 11:shrink=14"
            )
        epoch, kind, value = int(match[1]), match[2], match[3]
        if epoch < 1:
            raise ConfigError(f"option schedule (--ddsas-schedule): epochs count from 1, got {text!r}")
        if kind in ("keep", "shrink"):
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(
                    f"option schedule (--ddsas-schedule): {kind} needs a count >= 1, got {text!r}"
                )
            count = int(value)
            entry = ScheduleEntry(epoch, keep=count) if kind == "keep" else ScheduleEntry(epoch, shrink=count)
            parsed.append(entry)
        else:
            ops = tuple(op for op in value.split("+") if op)
            if not ops:
                raise ConfigError(f"option schedule (--ddsas-schedule): add needs op names, got {text!r}")
            for op in ops:
                try:
                    get_op_spec(op)
                except UnknownOpError as exc:  # it names the known ops
                    raise ConfigError(f"option schedule (--ddsas-schedule): in {text!r}, {exc}") from None
            parsed.append(ScheduleEntry(epoch, add=ops))
    return sorted(parsed, key=lambda e: e.epoch)


@dataclass(frozen=True)
class DDSASOptions(MethodOptions):
    """Options of DDSAS (Yang et al., ACML 2021, and the authors' public code)."""

    subspace_ops: int = option(
        28, "L: active (edge, op) pairs other than 'none' per cell type", flag="--subspace-ops", gt=0
    )
    resample_every: int = option(30, "M: steps between subspace resamples (within an epoch)", gt=0)
    ucb_c: float = option(1.44, "c: weight of the UCB exploration term", ge=0)
    space_schedule: SpaceSchedule = option(
        "static",
        "the public code's space configurations: static, shrink (14 least-salient pairs per cell type "
        "leave at epochs 11-51), expand (ops join at epochs 11-51), expand-imagenet (the rest at epoch 41)",
        flag="--ddsas-space",
    )
    schedule: tuple[str, ...] = option(
        (),
        "custom space schedule: EPOCH:shrink=N, EPOCH:add=op1+op2 and EPOCH:keep=K (each edge keeps its K "
        "most salient ops: fastnas's variant, not the paper's) entries, epochs counted from 1",
        flag="--ddsas-schedule",
    )
    weight_form: Literal["simple", "all"] = option(
        "simple",
        "simple: softmax(alpha|active) * sigmoid(beta) (the published runs); all: times the product of "
        "sigmoid(beta) (active) and 1 - sigmoid(beta) (inactive) over the edge",
        flag="--ddsas-weight-form",
    )
    normalise: bool = option(
        True,
        "L1-normalise each edge's mixed-op weights (appendix Eq. 7; the authors' code's --no_norm turns "
        "it off)",
        flag="--ddsas-normalise",
    )
    random_epochs: int = option(
        0,
        "the first epochs draw a random subspace every step, with no UCB update (the authors' code's "
        "--begin)",
        flag="--ddsas-random-epochs",
        ge=0,
    )
    random_prob: float = option(
        0.0,
        "probability that a resample draws a random instead of a UCB subspace (the authors' code's "
        "--rdss_prob)",
        flag="--ddsas-random-prob",
        ge=0,
        le=1,
    )
    gumbel_tau: tuple[float, float] | None = option(
        None,
        "FIRST,LAST: Gumbel-softmax over the active ops, its temperature annealed linearly per epoch from "
        "FIRST to LAST (the authors' code's --gumbel --tau_max --tau_min)",
    )
    init_scale: float = init_scale_option("alpha and beta")
    edge_norm: bool = option(
        False, "edge normalisation (PC-DARTS): weigh each node's incoming edges by softmax(beta_edge)"
    )

    def validate(self) -> None:
        if self.space_schedule != "static" and self.schedule:
            raise ConfigError(
                f"option space_schedule (--ddsas-space) {self.space_schedule!r} and custom schedule entries "
                "(--ddsas-schedule) both given; use one of them"
            )
        if self.gumbel_tau is not None and min(self.gumbel_tau) <= 0:
            raise ConfigError(
                f"option gumbel_tau (--gumbel-tau) needs temperatures > 0, got {self.gumbel_tau}"
            )
        parse_schedule(self.entries())

    def entries(self) -> tuple[str, ...]:
        """The schedule entries in force: the preset's or the custom ones."""
        return SPACE_SCHEDULES[self.space_schedule] or self.schedule


def draw_subspace(
    scores: torch.Tensor, available: torch.Tensor, none_columns: torch.Tensor, size: int
) -> torch.Tensor:
    """The public code's walk over ``scores`` (UCB values, or uniform draws for a random subspace).

    First, per edge, the available ops in descending score: a ``none`` met is switched on, the first other op
    is switched on and ends the walk; then all pairs in descending score (row-major on ties), switching on
    available pairs until ``size`` pairs other than ``none`` are on. Bool ``[edges, ops]``."""
    num_edges, num_ops = scores.shape
    mask = torch.zeros(num_edges, num_ops, dtype=torch.bool)
    is_none = none_columns.tolist()
    avail = available.tolist()
    per_edge = torch.sort(-scores.double(), dim=1, stable=True).indices.tolist()
    counted = 0
    for e in range(num_edges):
        for k in per_edge[e]:
            if not avail[e][k]:
                continue
            mask[e, k] = True
            if not is_none[k]:
                counted += 1
                break
    for flat in torch.sort(-scores.double().flatten(), stable=True).indices.tolist():
        if counted >= size:
            break
        e, k = divmod(flat, num_ops)
        if not avail[e][k]:
            continue
        if not is_none[k] and not bool(mask[e, k]):
            counted += 1
        mask[e, k] = True
    return mask


def shrink_available(
    saliency: torch.Tensor, available: torch.Tensor, none_columns: torch.Tensor, count: int
) -> torch.Tensor:
    """Remove the ``count`` least-salient available pairs (ascending saliency, row-major on ties), keeping
    at least one op per edge, two while the edge's ``none`` is available. Returns the new availability."""
    avail = available.clone()
    is_none = none_columns.tolist()
    num_ops = saliency.shape[1]
    removed = 0
    for flat in torch.sort(saliency.double().flatten(), stable=True).indices.tolist():
        if removed >= count:
            break
        e, k = divmod(flat, num_ops)
        if not bool(avail[e, k]):
            continue
        keep = 2 if any(bool(avail[e, j]) and is_none[j] for j in range(num_ops)) else 1
        if int(avail[e].sum()) > keep:
            avail[e, k] = False
            removed += 1
    return avail


class DDSAS(SearchAlgorithm):
    """DDSAS: ``DDSAS(space, subspace_ops=28, resample_every=30, space_schedule="shrink")``."""

    name = "ddsas"
    leaves_weights_unused = True  # a step runs a sub-graph: DDP finds the unused weights
    samples_subgraphs = True  # drawn on the host in on_step: no compiled or captured step
    Options = DDSASOptions
    defaults = SearchDefaults(epochs=50, batch_size=64, arch_lr=3e-4, arch_weight_decay=1e-3)
    options: DDSASOptions
    record_files: ClassVar[tuple[str, ...]] = ("sampling",)

    @classmethod
    def adjust_hyper(cls, hyper: SearchDefaults, options: Any, given: Mapping[str, Any]) -> SearchDefaults:
        """The public scripts run 60 epochs with a space schedule (its last step is at epoch 51)."""
        if isinstance(options, DDSASOptions) and options.entries() and given.get("epochs") is None:
            return hyper.updated(epochs=60)
        return hyper

    def __init__(self, space: SearchSpace, options: DDSASOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        space, opts = self.space, self.options
        if opts.subspace_ops < space.num_edges:
            raise ConfigError(
                f"option subspace_ops (--subspace-ops) L={opts.subspace_ops} is smaller than the "
                f"{space.num_edges} edges of a cell (each needs an active op); give L >= {space.num_edges}"
            )
        self.alphas = init_alphas(space, opts.init_scale)
        self.betas = init_alphas(space, opts.init_scale)
        self.edge_norm = EdgeNormalisation(space, opts.init_scale) if opts.edge_norm else None
        self.schedule = parse_schedule(opts.entries())
        for entry in self.schedule:
            for op in entry.add:
                if op not in space.ops:
                    raise ConfigError(
                        f"DDSAS space schedule adds {op!r}, which is not in the space "
                        f"({', '.join(space.ops)}); add it with --ops or choose another schedule"
                    )
        zero = torch.tensor([get_op_spec(op).kind == "zero" for op in space.ops])
        masks = candidate_masks(space) or {
            t: torch.ones(space.num_edges, space.num_ops, dtype=torch.bool) for t in space.cell_types
        }
        later = torch.tensor([any(op in e.add for e in self.schedule) for op in space.ops])
        self.candidates = {t: m.clone() for t, m in masks.items()}
        self.none_columns = zero
        shape = (space.num_edges, space.num_ops)
        # host state, in the checkpoint through get_extra_state
        self.available = {t: m & ~later for t, m in masks.items()}
        if not all(bool((a & ~zero).any(-1).all()) for a in self.available.values()):
            raise ConfigError(
                "the DDSAS space schedule makes every op other than 'none' of an edge available only later; "
                "each edge needs one from the first epoch"
            )
        self.counts = {t: torch.ones(shape, dtype=torch.float64) for t in space.cell_types}
        self.saliency_table = {t: torch.zeros(shape, dtype=torch.float64) for t in space.cell_types}
        self.ucb = {t: torch.zeros(shape, dtype=torch.float64) for t in space.cell_types}
        self.subspace = {t: torch.zeros(shape, dtype=torch.bool) for t in space.cell_types}
        self.total = 1  # N
        self.drawn = False
        self.resamples = 0
        self.tau: float | None = None
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        self._records: list[tuple[str, dict[str, Any]]] = []
        eligible = sum(int((m & ~zero).sum()) for m in masks.values()) // len(masks)
        if opts.subspace_ops >= eligible:
            warnings.warn(
                f"DDSAS: L={opts.subspace_ops} covers all {eligible} (edge, op) pairs of a cell: every op is "
                "always active (set --subspace-ops below it to sample subspaces)",
                stacklevel=2,
            )
        for t in space.cell_types:  # the device copy of the subspace the step's weights are masked with
            self.register_buffer(f"active_{t}", torch.zeros(shape, dtype=torch.bool), persistent=False)

    # -------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        copy = lambda d: {t: v.clone() for t, v in d.items()}  # noqa: E731
        return {
            "rules": "public-code",
            "total": self.total,
            "drawn": self.drawn,
            "resamples": self.resamples,
            "counts": copy(self.counts),
            "saliency": copy(self.saliency_table),
            "ucb": copy(self.ucb),
            "subspace": copy(self.subspace),
            "available": copy(self.available),
            "generator": self.generator.get_state(),
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or state.get("rules") != "public-code":
            raise ConfigError(
                "this DDSAS checkpoint was written by an earlier fastnas, whose sampler followed the "
                "appendix rather than the authors' code (no pseudo-counts, per-step saliency); it cannot "
                "resume under the current rules: start the search again"
            )

        # host state: a checkpoint loaded with map_location="cuda" would put these tensors on the GPU
        def host(d: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
            return {t: v.to("cpu", dtype, copy=True) for t, v in d.items()}

        self.total = int(state["total"])
        self.drawn = bool(state["drawn"])
        self.resamples = int(state["resamples"])
        self.counts = host(state["counts"], torch.float64)
        self.saliency_table = host(state["saliency"], torch.float64)
        self.ucb = host(state["ucb"], torch.float64)
        self.available = host(state["available"], torch.bool)
        self.generator.set_state(state["generator"].cpu())
        self._set_subspace(host(state["subspace"], torch.bool))

    def _set_subspace(self, subspace: dict[str, torch.Tensor]) -> None:
        self.subspace = subspace
        for t, mask in subspace.items():
            getattr(self, f"active_{t}").copy_(mask)  # one host-to-device copy per resample

    # -------------------------------------------------------------- sampling
    def _mixed(
        self, soft: torch.Tensor, p: torch.Tensor, active: torch.Tensor, normalise: bool
    ) -> torch.Tensor:
        """``weight_form`` on the masked softmax ``soft`` and ``p = sigmoid(beta)`` of one cell type."""
        if self.options.weight_form == "simple":
            w = soft * p
        else:
            w = soft * torch.where(active, p, 1 - p).prod(-1, keepdim=True)
        return w / (w.abs().sum(-1, keepdim=True) + 1e-14) if normalise else w

    def update(self) -> None:
        """The public code's ``update_dss``: saliency and counts of the active pairs (from the unnormalised
        weights, computed here in float64), then the UCB, then ``N + 1``."""
        log_total = math.log(self.total)
        edges = None if self.edge_norm is None else self.edge_norm.edge_weights()
        for t in self.space.cell_types:
            with torch.no_grad():
                active = self.subspace[t]
                alpha = self.alphas[t].detach().to("cpu", torch.float64)
                p = torch.sigmoid(self.betas[t].detach().to("cpu", torch.float64))
                w = self._mixed(masked_softmax(alpha, active), p, active, normalise=False)
                if edges is not None:
                    w = w * edges[t].detach().to("cpu", torch.float64).unsqueeze(-1)
            n, s = self.counts[t], self.saliency_table[t]
            s.copy_(torch.where(active, (s * n + w) / (n + 1), s))
            n.add_(active.double())
            self.ucb[t] = p + self.options.ucb_c * torch.sqrt(log_total / n)
        self.total += 1

    def resample(self, epoch: int, step: int, random: bool = False) -> None:
        """Draw a new subspace of every cell type from the UCB table (or uniform draws if ``random``)."""
        self.resamples += 1
        subspace = {}
        for t in self.space.cell_types:
            scores = torch.rand(self.ucb[t].shape, generator=self.generator) if random else self.ucb[t]
            subspace[t] = draw_subspace(
                scores, self.available[t], self.none_columns, self.options.subspace_ops
            )
        self._set_subspace(subspace)
        self.drawn = True
        ops = self.space.ops
        self._records.append(
            (
                "sampling",
                {
                    "stage_epoch": epoch,
                    "step": step,
                    "resample": self.resamples,
                    "random": random,
                    "subspace": {
                        t: [[ops[k] for k in row.nonzero().flatten().tolist()] for row in s]
                        for t, s in subspace.items()
                    },
                    # times each pair was active at an update (the UCB's n less the pseudo-count)
                    "counts": {t: (c - 1).long().tolist() for t, c in self.counts.items()},
                    "ucb": {t: u.tolist() for t, u in self.ucb.items()},
                },
            )
        )

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Apply the schedule entries of this epoch (``epoch`` is 0-based; entries count from 1) and set the
        Gumbel temperature."""
        if self.options.gumbel_tau is not None:
            first, last = self.options.gumbel_tau
            self.tau = first - (first - last) * epoch / max(num_epochs - 1, 1)
        if epoch == 0:
            late = [e.epoch for e in self.schedule if e.epoch > num_epochs]
            if late:
                warnings.warn(
                    f"DDSAS: schedule entries for epochs {late} come after the last epoch ({num_epochs}) "
                    "and are never applied (the published schedules run 60 epochs)",
                    stacklevel=2,
                )
        for entry in self.schedule:
            if entry.epoch != epoch + 1:
                continue
            for t in self.space.cell_types:
                if entry.add:
                    added = torch.tensor([op in entry.add for op in self.space.ops])
                    self.available[t] = self.available[t] | (self.candidates[t] & added)
                if entry.shrink is not None:
                    self.available[t] = shrink_available(
                        self.saliency_table[t], self.available[t], self.none_columns, entry.shrink
                    )
                if entry.keep is not None:
                    self.available[t] = self._most_salient(t, entry.keep) | (
                        self.available[t] & self.none_columns
                    )
            left = min(int((a & ~self.none_columns).sum()) for a in self.available.values())
            if left < self.options.subspace_ops:
                warnings.warn(
                    f"DDSAS: from epoch {entry.epoch} only {left} pairs other than 'none' are available, "
                    f"fewer than L = {self.options.subspace_ops}: the subspace is the whole remaining space",
                    stacklevel=2,
                )

    def _most_salient(self, cell_type: str, keep: int) -> torch.Tensor:
        """Each edge's ``keep`` most salient available ops other than ``none`` (ties: lower op index)."""
        eligible = self.available[cell_type] & ~self.none_columns
        scores = self.saliency_table[cell_type].masked_fill(~eligible, -math.inf)
        order = torch.sort(-scores, dim=-1, stable=True).indices[:, :keep]
        kept = torch.zeros_like(eligible)
        kept.scatter_(1, order, True)
        return kept & eligible

    def on_step(self, epoch: int, step: int) -> None:
        """Before each iteration: in the first ``random_epochs`` a random subspace every step; afterwards,
        every ``M`` steps of an epoch, update the saliency and UCB, then resample."""
        if epoch < self.options.random_epochs:
            self.resample(epoch, step, random=True)
        elif not self.drawn or step % self.options.resample_every == 0:
            self.update()
            prob = self.options.random_prob
            random = prob > 0 and float(torch.rand((), generator=self.generator)) < prob
            self.resample(epoch, step, random=random)

    def drain_records(self) -> list[tuple[str, dict[str, Any]]]:
        records, self._records = self._records, []
        return records

    def active_set(self) -> dict[str, torch.Tensor]:
        if not self.drawn:  # a user loop that never calls model.start_step
            self.on_step(0, 0)
        return self.subspace

    # -------------------------------------------------------------- weights
    def arch_weights(self) -> dict[str, torch.Tensor]:
        """The step's mixed-op weights (``weight_form``, L1-normalised per edge: appendix Eq. 7); with
        ``gumbel_tau``, Gumbel noise on ``log_softmax(alpha)`` over all ops, then the masked softmax at the
        epoch's temperature (the public code's form)."""
        self.active_set()
        out = {}
        for t, alpha in self.alphas.items():
            active = getattr(self, f"active_{t}")
            if self.tau is not None:
                noise = -torch.empty_like(alpha).exponential_().log()
                soft = masked_softmax((alpha.log_softmax(-1) + noise) / self.tau, active)
            else:
                soft = masked_softmax(alpha, active)
            out[t] = self._mixed(soft, torch.sigmoid(self.betas[t]), active, self.options.normalise)
        return out if self.edge_norm is None else self.edge_norm.weigh(out)

    def recorded_weights(self) -> dict[str, torch.Tensor]:
        """``saliency x availability`` (what the derivation ranks; step weights cover only the subspace)."""
        return self.saliency()

    def saliency(self) -> dict[str, torch.Tensor]:
        """Per (edge, op) the running mean of its unnormalised weight at the resampling points where it was
        active, times its availability (0 for a pair the schedule removed or never made available)."""
        return {t: (s * self.available[t]).float() for t, s in self.saliency_table.items()}

    def derive(self) -> Architecture:
        """The DARTS rule on ``saliency x availability`` (NAS-Bench-201: its per-edge argmax)."""
        return derive_space_rule(self.space, self.saliency())

    def space_parameters(self) -> nn.ParameterDict:
        """The space parameters beta."""
        return self.betas
