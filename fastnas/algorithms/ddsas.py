"""DDSAS (seed 001 and its appendix; REFERENCE.md section 8): a dynamic subspace chosen by UCB.

- *Space parameters* ``beta`` (one per edge and op, like ``alpha``); space probability ``p = sigmoid(beta)``.
- *Subspace*: a bool mask over (edge, op) per cell type with ``L`` active ops other than ``none``
  (``subspace_ops``, default 28 of the DARTS cell's 14 x 7), at least one per edge; ``none`` is always kept
  where the edge has it (REFERENCE.md; it costs nothing) and is not counted in ``L``. Every ``M`` steps
  (``resample_every``, default 30; counted within the epoch, so every epoch starts with a resample) it is
  drawn again by UCB, ``sigmoid(beta) + c * sqrt(ln N / n)`` (``c = 1.44``, ``N`` the resamples so far
  including this one, ``n`` the times the op was drawn before, ``n = 0`` giving ``+inf``): first each edge
  takes its highest-UCB op, then the remaining slots go to the highest UCB values of all. Ties go to the
  lower op index (then the lower edge), so sampling is deterministic and ties spread over the edges; the
  seed does not say how it breaks ties.
- *Mixed op* over the active ops only (the others are never called):
  ``w = softmax(alpha | active) * sigmoid(beta)``, L1-normalised per edge (appendix Eq. 7, the
  "approximation" without which the gradients of ``p`` vanish, Eq. 13).
- *Saliency*: per (edge, op), the running mean of its weight over the steps where it was active; the
  derivation is the DARTS rule on the saliency (NAS-Bench-201: its argmax).
- *Schedules* (``schedule``): ``E:keep=K`` at the start of epoch ``E`` (1-based, of the run) leaves each edge
  its ``K`` highest-saliency ops other than ``none`` (the shrinking space); ``E:add=op1+op2`` adds ops to the
  space at epoch ``E`` (before it they are out of every subspace: the expanding space).

Every sampler state (``N``, ``n``, the saliency sums, the current subspace, the ops the schedule has
removed) is saved with the model, so a resumed run samples exactly what an uninterrupted one does; each
resample is recorded in ``sampling.jsonl`` (the op sampling counts of appendix figure 9).

Published settings (:attr:`DDSAS.defaults`): 50 epochs, batch 64, SGD 0.025 cosine to 0.001, Adam lr 3e-4
betas (0.5, 0.999) for alpha and beta, weight decay 1e-3 (REFERENCE.md and the public code's default; the
appendix text says 1e-4). On NAS-Bench-201 (6 edges x 4 ops other than ``none``) the seed does not give
``L``; the default 28 would cover the whole space, so give e.g. ``--subspace-ops 12``.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fastnas.algorithms.base import Architecture, SearchAlgorithm, SearchDefaults
from fastnas.algorithms.darts import candidate_masks, init_alphas, masked_softmax
from fastnas.algorithms.derivation import derive_space_rule
from fastnas.algorithms.edge_norm import EdgeNormalisation
from fastnas.algorithms.options import MethodOptions, option
from fastnas.errors import ConfigError
from fastnas.ops import UnknownOpError, get_op_spec
from fastnas.spaces.base import SearchSpace

__all__ = ["DDSAS", "DDSASOptions", "ScheduleEntry", "parse_schedule", "select_subspace", "ucb_scores"]

_ENTRY = re.compile(r"^\s*(\d+)\s*:\s*(keep|add)\s*=\s*(\S+)\s*$")


@dataclass(frozen=True)
class ScheduleEntry:
    """At the start of epoch ``epoch`` (1-based): keep ``keep`` ops per edge, or add the ops ``add``."""

    epoch: int
    keep: int | None = None
    add: tuple[str, ...] = ()


def parse_schedule(entries: tuple[str, ...]) -> list[ScheduleEntry]:
    """``("10:keep=4", "1:add=sep_conv_3x3+sep_conv_5x5")`` -> entries sorted by epoch."""
    parsed = []
    for text in entries:
        match = _ENTRY.match(text)
        if match is None:
            raise ConfigError(
                f"option schedule (--ddsas-schedule): bad entry {text!r}; write EPOCH:keep=K (each edge "
                "keeps its K most salient ops) or EPOCH:add=op1+op2 (ops join the space), e.g. 20:keep=4"
            )
        epoch, kind, value = int(match[1]), match[2], match[3]
        if epoch < 1:
            raise ConfigError(f"option schedule (--ddsas-schedule): epochs count from 1, got {text!r}")
        if kind == "keep":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(
                    f"option schedule (--ddsas-schedule): keep needs a count >= 1, got {text!r}"
                )
            parsed.append(ScheduleEntry(epoch, keep=int(value)))
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
    """Options of DDSAS (REFERENCE.md section 8)."""

    subspace_ops: int = option(
        28, "L: active (edge, op) pairs other than 'none' per cell type", flag="--subspace-ops", gt=0
    )
    resample_every: int = option(30, "M: steps between subspace resamples (within an epoch)", gt=0)
    ucb_c: float = option(1.44, "c: weight of the UCB exploration term", ge=0)
    schedule: tuple[str, ...] = option(
        (),
        "space schedule: EPOCH:keep=K (shrink) and EPOCH:add=op1+op2 (expand) entries",
        flag="--ddsas-schedule",
    )
    init_scale: float = option(1e-3, "alpha and beta start as init_scale * randn", ge=0)
    edge_norm: bool = option(
        False, "edge normalisation (PC-DARTS): weigh each node's incoming edges by softmax(beta_edge)"
    )

    def validate(self) -> None:
        parse_schedule(self.schedule)


def ucb_scores(p: torch.Tensor, counts: torch.Tensor, total: int, c: float) -> torch.Tensor:
    """``p + c * sqrt(ln total / n)`` in float64, ``+inf`` where ``n == 0``."""
    p, n = p.double(), counts.double()
    bonus = c * torch.sqrt(math.log(max(total, 1)) / n.clamp_min(1))
    return torch.where(n == 0, torch.full_like(p, math.inf), p + bonus)


def select_subspace(scores: torch.Tensor, eligible: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` pairs to activate: each edge's highest score first (ties: lower op index), then the
    highest remaining scores (ties: lower op index, then lower edge, so that equal scores spread over the
    edges). ``eligible``: bool ``[edges, ops]`` of
    the pairs that may be drawn (not ``none``, in the candidate set, in the scheduled space)."""
    if not bool(eligible.any(-1).all()):
        raise ConfigError("every edge needs at least one op other than 'none' the subspace can draw")
    masked = scores.masked_fill(~eligible, -math.inf)
    chosen = torch.zeros_like(eligible)
    chosen[torch.arange(len(scores)), masked.argmax(-1)] = True  # argmax: the first of equal maxima
    rest = size - len(scores)
    if rest > 0:
        flat = masked.masked_fill(chosen, -math.inf).t().flatten()  # op-major: ties spread over edges
        order = torch.sort(-flat, stable=True).indices[:rest]
        picks = order[flat[order] > -math.inf]
        num_edges = scores.shape[0]
        chosen[picks % num_edges, picks // num_edges] = True
    return chosen


class DDSAS(SearchAlgorithm):
    """DDSAS: ``DDSAS(space, subspace_ops=28, resample_every=30)``."""

    name = "ddsas"
    leaves_weights_unused = True  # a step runs a sub-graph: DDP finds the unused weights
    samples_subgraphs = True  # drawn on the host in on_step: no compiled or captured step
    Options = DDSASOptions
    defaults = SearchDefaults(epochs=50, batch_size=64, arch_lr=3e-4, arch_weight_decay=1e-3)
    options: DDSASOptions
    record_files: ClassVar[tuple[str, ...]] = ("sampling",)

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
        self.schedule = parse_schedule(opts.schedule)
        for entry in self.schedule:
            for op in entry.add:
                if op not in space.ops:
                    raise ConfigError(
                        f"option schedule (--ddsas-schedule) adds {op!r}, which is not in the space "
                        f"({', '.join(space.ops)}); add it with --ops"
                    )
        zero = torch.tensor([get_op_spec(op).kind == "zero" for op in space.ops])
        masks = candidate_masks(space) or {
            t: torch.ones(space.num_edges, space.num_ops, dtype=torch.bool) for t in space.cell_types
        }
        later = torch.tensor([any(op in e.add for e in self.schedule) for op in space.ops])
        #: host state (in the checkpoint through get_extra_state)
        self.candidates = {t: m.clone() for t, m in masks.items()}
        self.none_columns = zero
        self.allowed = {t: m & ~later for t, m in masks.items()}  # ops the schedule keeps in the space
        if not all(bool((a & ~zero).any(-1).all()) for a in self.allowed.values()):
            raise ConfigError(
                "option schedule (--ddsas-schedule) adds every op other than 'none' of an edge later; "
                "each edge needs one from the first epoch"
            )
        self.counts = {
            t: torch.zeros(space.num_edges, space.num_ops, dtype=torch.long) for t in space.cell_types
        }
        self.subspace: dict[str, torch.Tensor] = {}
        self.resamples = 0
        self._records: list[tuple[str, dict[str, Any]]] = []
        eligible = sum(int((m & ~zero).sum()) for m in masks.values()) // len(masks)
        if opts.subspace_ops >= eligible:
            warnings.warn(
                f"DDSAS: L={opts.subspace_ops} covers all {eligible} (edge, op) pairs of a cell: every op is "
                "always active (set --subspace-ops below it to sample subspaces)",
                stacklevel=2,
            )
        for t in space.cell_types:  # device-side saliency sums (no host reads per step)
            self.register_buffer(f"saliency_sum_{t}", torch.zeros(space.num_edges, space.num_ops))
            self.register_buffer(f"saliency_steps_{t}", torch.zeros(space.num_edges, space.num_ops))
            self.register_buffer(
                f"active_{t}", torch.zeros(space.num_edges, space.num_ops, dtype=torch.bool), persistent=False
            )

    # -------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "resamples": self.resamples,
            "counts": {t: c.clone() for t, c in self.counts.items()},
            "subspace": {t: s.clone() for t, s in self.subspace.items()},
            "allowed": {t: a.clone() for t, a in self.allowed.items()},
        }

    def set_extra_state(self, state: Any) -> None:
        # host state: a checkpoint loaded with map_location="cuda" would put these tensors on the GPU
        self.resamples = int(state["resamples"])
        self.counts = {t: c.to("cpu", torch.long, copy=True) for t, c in state["counts"].items()}
        self.allowed = {t: a.to("cpu", torch.bool, copy=True) for t, a in state["allowed"].items()}
        self._set_subspace({t: s.to("cpu", torch.bool, copy=True) for t, s in state["subspace"].items()})

    def _set_subspace(self, subspace: dict[str, torch.Tensor]) -> None:
        self.subspace = subspace
        for t, mask in subspace.items():
            getattr(self, f"active_{t}").copy_(mask)  # one host-to-device copy per resample

    # -------------------------------------------------------------- sampling
    def eligible(self, cell_type: str) -> torch.Tensor:
        """Bool ``[edges, ops]`` of the pairs a subspace may draw: not ``none``, in the space."""
        return self.allowed[cell_type] & ~self.none_columns

    def resample(self, epoch: int, step: int) -> None:
        """Draw a new subspace of every cell type by UCB (one host read of ``sigmoid(beta)``)."""
        self.resamples += 1
        probs = torch.sigmoid(torch.stack([self.betas[t].detach() for t in self.space.cell_types])).cpu()
        subspace = {}
        for i, t in enumerate(self.space.cell_types):
            scores = ucb_scores(probs[i], self.counts[t], self.resamples, self.options.ucb_c)
            drawn = select_subspace(scores, self.eligible(t), self.options.subspace_ops)
            self.counts[t] += drawn.long()
            subspace[t] = drawn | (self.allowed[t] & self.none_columns)  # none: free, kept
        self._set_subspace(subspace)
        ops = self.space.ops
        self._records.append(
            (
                "sampling",
                {
                    "stage_epoch": epoch,
                    "step": step,
                    "resample": self.resamples,
                    "subspace": {
                        t: [[ops[k] for k in row.nonzero().flatten().tolist()] for row in s]
                        for t, s in subspace.items()
                    },
                    "counts": {t: c.tolist() for t, c in self.counts.items()},
                },
            )
        )

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Apply the schedule entries of this epoch (``epoch`` is 0-based; entries count from 1)."""
        if epoch == 0:
            late = [e.epoch for e in self.schedule if e.epoch > num_epochs]
            if late:
                warnings.warn(
                    f"DDSAS: schedule entries for epochs {late} come after the last epoch ({num_epochs}) "
                    "and are never applied",
                    stacklevel=2,
                )
        for entry in self.schedule:
            if entry.epoch != epoch + 1:
                continue
            if entry.keep is not None and entry.keep * self.space.num_edges < self.options.subspace_ops:
                warnings.warn(
                    f"DDSAS: from epoch {entry.epoch} each edge keeps {entry.keep} ops, "
                    f"{entry.keep * self.space.num_edges} pairs in all, fewer than L = "
                    f"{self.options.subspace_ops}: the subspace is the whole remaining space",
                    stacklevel=2,
                )
            for t in self.space.cell_types:
                if entry.add:
                    added = torch.tensor([op in entry.add for op in self.space.ops])
                    self.allowed[t] = self.allowed[t] | (self.candidates[t] & added)
                if entry.keep is not None:
                    self.allowed[t] = self._most_salient(t, entry.keep) | (
                        self.allowed[t] & self.none_columns
                    )
            self.subspace = {}  # the next step draws from the new space

    def _most_salient(self, cell_type: str, keep: int) -> torch.Tensor:
        """Each edge's ``keep`` most salient allowed ops other than ``none`` (ties: lower op index)."""
        saliency = self.saliency()[cell_type].cpu().double()
        eligible = self.eligible(cell_type)
        scores = saliency.masked_fill(~eligible, -math.inf)
        order = torch.sort(-scores, dim=-1, stable=True).indices[:, :keep]
        kept = torch.zeros_like(eligible)
        kept.scatter_(1, order, True)
        return kept & eligible

    def on_step(self, epoch: int, step: int) -> None:
        """Resample every ``M`` steps of an epoch; accumulate the saliency of the step's weights."""
        if not self.subspace or step % self.options.resample_every == 0:
            self.resample(epoch, step)
        with torch.no_grad():
            for t, w in self.arch_weights().items():
                getattr(self, f"saliency_sum_{t}").add_(w.float())
                getattr(self, f"saliency_steps_{t}").add_(getattr(self, f"active_{t}").float())

    def drain_records(self) -> list[tuple[str, dict[str, Any]]]:
        records, self._records = self._records, []
        return records

    def active_set(self) -> dict[str, torch.Tensor]:
        if not self.subspace:  # a user loop that never calls model.start_step
            self.resample(0, 0)
        return self.subspace

    # -------------------------------------------------------------- weights
    def arch_weights(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha | active) * sigmoid(beta)``, L1-normalised per edge (appendix Eq. 7)."""
        self.active_set()
        out = {}
        for t, alpha in self.alphas.items():
            active = getattr(self, f"active_{t}")
            w = masked_softmax(alpha, active) * torch.sigmoid(self.betas[t])
            out[t] = w / w.sum(-1, keepdim=True)
        return out if self.edge_norm is None else self.edge_norm.weigh(out)

    def recorded_weights(self) -> dict[str, torch.Tensor]:
        """The saliency (what the derivation ranks; step weights cover only the subspace)."""
        return self.saliency()

    def saliency(self) -> dict[str, torch.Tensor]:
        """Per (edge, op) the mean weight over the steps it was active (0 if it never was)."""
        out = {}
        for t in self.space.cell_types:
            total, steps = getattr(self, f"saliency_sum_{t}"), getattr(self, f"saliency_steps_{t}")
            out[t] = total / steps.clamp_min(1)
        return out

    def derive(self) -> Architecture:
        """The DARTS rule on the saliency (NAS-Bench-201: its per-edge argmax)."""
        with torch.no_grad():
            return derive_space_rule(self.space, self.saliency())

    def space_parameters(self) -> nn.ParameterDict:
        """The space parameters beta."""
        return self.betas
