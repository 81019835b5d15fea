"""P-DARTS (Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the Depth Gap
between Search and Evaluation", ICCV 2019; described in Paganucci, "Efficient ConvNet Architectures:
Differentiable Neural Architecture Search", semester thesis, ETH Zurich, 2020, section 3.2): progressive
DARTS in stages.

The search runs in stages (default 3 x 25 epochs) on ever deeper supernets (5, 11, 17 cells at C=16).
Each stage builds a new supernet with fresh weights over the candidate sets the previous stage left:
after a stage every edge keeps its best ops by softmax(alpha) (8 -> 5 -> 3; Chen et al. 2019, "Search
Space Approximation"), and the genotype takes the best one (``none`` excluded) with the DARTS rule. The
first ``warmup_epochs`` (10) epochs of a stage train the weights only. Search-space regularisation (Chen et
al. 2019, "Search Space Regularization"): dropout on the identity ``skip_connect`` output at rate ``r``
per stage, decayed within a stage of ``E`` epochs as ``r * (E - e - 1) / E`` during the weight-only epochs
and ``r * exp(-0.2 (e - warmup))`` afterwards (``E`` is the stage's epoch count, as in the P-DARTS
schedule). Rates by dataset (:data:`SKIP_DROPOUT_PRESETS`): CIFAR-10 0.1, 0.4, 0.7 - the authors' public
search command (github.com/chenxin061/pdarts, README; the paper's text gives 0.0, 0.4, 0.7); CIFAR-100
0.1, 0.2, 0.3 - the paper's text (Chen et al. 2019, its architecture-search experiments on CIFAR100).
The final normal cells keep at most ``max_skip`` (2) skip-connects (Chen et al. 2019, "Search Space
Regularization"; Paganucci 2020, section 3.2.2), each normal-cell type on its own (with the thesis' three
normal-cell types, section 3.3.2, every one is limited): while a cell has more, the weakest selected
skip's weight is set below every real weight and the cell is derived again, so that edge takes its next
best non-skip op (or yields to a stronger edge).

Hyper-parameters (:attr:`PDARTS.defaults`, Chen et al. 2019): batch 96, SGD lr 0.025 cosine to 0
(restarted every stage), Adam 6e-4 with wd 1e-3 for the architecture, architecture gradients norm-clipped
to 5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from fastnas.algorithms.base import SearchAlgorithm, SearchDefaults, StagePlan
from fastnas.algorithms.darts import DARTS, DARTSOptions
from fastnas.algorithms.derivation import DerivationRule, derive_darts_cell
from fastnas.algorithms.options import option
from fastnas.errors import ConfigError
from fastnas.genotype import CellGenotype, Genotype
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace

__all__ = ["PDARTS", "SKIP_DROPOUT_PRESETS", "PDARTSOptions", "skip_dropout_rate"]

SKIP_DROPOUT_PRESETS: dict[str, tuple[float, ...]] = {
    "cifar10": (0.1, 0.4, 0.7),  # the authors' public search command (chenxin061/pdarts README)
    "cifar100": (0.1, 0.2, 0.3),  # the paper's text (Chen et al. 2019, experiments on CIFAR100)
}
"""Per-stage skip-connect dropout rates of P-DARTS by dataset (other datasets: the CIFAR-10 rates).

CIFAR-10: 0.1, 0.4, 0.7, the search command of the authors' public code (github.com/chenxin061/pdarts,
README), which produced the published cells (the paper's text says 0.0, 0.4, 0.7). CIFAR-100: 0.1, 0.2,
0.3, the paper's text (Chen, Xie, Wu & Tian, ICCV 2019, experiments)."""


def skip_dropout_rate(rate: float, epoch: int, stage_epochs: int, warmup_epochs: int) -> float:
    """The dropout rate on ``skip_connect`` at ``epoch`` (0-based, within its stage)."""
    if epoch < warmup_epochs:
        return rate * (stage_epochs - epoch - 1) / stage_epochs
    return rate * math.exp(-(epoch - warmup_epochs) * 0.2)


@dataclass(frozen=True)
class PDARTSOptions(DARTSOptions):
    """Options of P-DARTS; the per-stage lists must all have one entry per stage."""

    stage_epochs: tuple[int, ...] = option((25, 25, 25), "epochs of each stage")
    stage_layers: tuple[int, ...] = option((5, 11, 17), "cells of each stage's supernet")
    stage_channels: tuple[int, ...] = option(
        (), "initial channels of each stage's supernet (P-DARTS' 'add width'; empty: --C for every stage)"
    )
    keep_ops: tuple[int, ...] = option(
        (5, 3, 1), "ops each edge keeps after each stage; the last is the genotype's one op per edge"
    )
    skip_dropout: tuple[float, ...] = option(
        SKIP_DROPOUT_PRESETS["cifar10"],
        "skip_connect dropout rate of each stage (by dataset: cifar10 0.1,0.4,0.7; cifar100 0.1,0.2,0.3)",
    )
    max_skip: int = option(2, "most skip_connects the final normal cell may keep", ge=0)
    warmup_epochs: int = option(10, "weight-only epochs at the start of each stage", ge=0)
    carry_alphas: bool = option(
        False, "carry the kept ops' alphas into the next stage (P-DARTS re-initialises them)"
    )

    @classmethod
    def dataset_defaults(cls, dataset: str) -> dict[str, Any]:
        return {"skip_dropout": SKIP_DROPOUT_PRESETS.get(dataset, SKIP_DROPOUT_PRESETS["cifar10"])}

    def validate(self) -> None:
        stages = len(self.stage_epochs)
        lists = {
            "stage_layers": self.stage_layers,
            "keep_ops": self.keep_ops,
            "skip_dropout": self.skip_dropout,
            **({"stage_channels": self.stage_channels} if self.stage_channels else {}),
        }
        if stages < 1:
            raise ConfigError("option stage_epochs (--stage-epochs) needs at least one stage, e.g. 25,25,25")
        for name, values in lists.items():
            if len(values) != stages:
                raise ConfigError(
                    f"option {name} (--{name.replace('_', '-')}) has {len(values)} entries but there are "
                    f"{stages} stages (--stage-epochs {','.join(map(str, self.stage_epochs))}); give one per "
                    "stage"
                )
        checks = (
            ("stage_epochs", self.stage_epochs, 1, "an epoch count >= 1"),
            ("stage_layers", self.stage_layers, 3, "a cell count >= 3 (two cells are reductions)"),
            ("stage_channels", self.stage_channels, 1, "a channel count >= 1"),
            ("keep_ops", self.keep_ops, 1, "an op count >= 1"),
        )
        for name, values, low, what in checks:
            bad = [v for v in values if v < low]
            if bad:
                raise ConfigError(f"option {name} (--{name.replace('_', '-')}) must hold {what}, got {bad}")
        if self.keep_ops[-1] != 1:
            raise ConfigError(
                "option keep_ops (--keep-ops) must end with 1 (the genotype's one op per edge), got "
                f"{self.keep_ops}"
            )
        if any(b > a for a, b in zip(self.keep_ops, self.keep_ops[1:], strict=False)):
            raise ConfigError(
                f"option keep_ops (--keep-ops) must not grow from stage to stage, got {self.keep_ops}"
            )
        if not all(0.0 <= r < 1.0 for r in self.skip_dropout):
            raise ConfigError(
                f"option skip_dropout (--skip-dropout) rates must be in [0, 1), got {self.skip_dropout}"
            )
        if any(self.warmup_epochs >= e for e in self.stage_epochs):
            raise ConfigError(
                f"option warmup_epochs (--warmup-epochs) {self.warmup_epochs} leaves a stage of "
                f"{min(self.stage_epochs)} epochs no architecture update; lower it below every stage's epochs"
            )


class PDARTS(DARTS):
    """P-DARTS: DARTS in stages with per-edge candidate sets that shrink after each stage."""

    name = "pdarts"
    Options = PDARTSOptions
    options: PDARTSOptions
    space: DartsSpace
    defaults = SearchDefaults(
        epochs=75,
        batch_size=96,
        C=16,
        layers=17,
        lr=0.025,
        lr_min=0.0,
        arch_lr=6e-4,
        arch_weight_decay=1e-3,
        arch_grad_clip=5.0,
    )

    def __init__(self, space: SearchSpace, options: PDARTSOptions | None = None, **option_values: Any):
        super().__init__(space, options, **option_values)
        self.stage = 0
        self.epoch_in_stage = 0
        if not self.space.restricted and self.options.keep_ops[0] > self.space.num_ops:
            raise ConfigError(
                f"option keep_ops (--keep-ops) keeps {self.options.keep_ops[0]} ops after stage 1, but the "
                f"edges have only {self.space.num_ops} candidates there; lower it"
            )

    @classmethod
    def prepare_space(cls, space: SearchSpace) -> DartsSpace:
        if not isinstance(space, DartsSpace):
            raise ConfigError(
                f"{cls.name} searches a DARTS cell space (darts, darts-extended), got {space.name!r}"
            )
        return space

    # ---------------------------------------------------------------------------------------- stages
    @classmethod
    def adjust_hyper(cls, hyper: SearchDefaults, options: Any, given: Mapping[str, Any]) -> SearchDefaults:
        """Epochs and depth come from the stages: ``--epochs`` / ``--layers`` would contradict them."""
        for name, flag in (("epochs", "--stage-epochs"), ("layers", "--stage-layers")):
            if given.get(name) is not None:
                raise ConfigError(f"{cls.name} runs in stages: set {flag} instead of --{name}")
        return replace(hyper, epochs=sum(options.stage_epochs), layers=options.stage_layers[-1])

    @classmethod
    def stage_plans(cls, options: Any, C: int, layers: int, epochs: int) -> list[StagePlan]:
        channels = options.stage_channels or (C,) * len(options.stage_epochs)
        return [
            StagePlan(index=i, epochs=e, layers=n, C=c)
            for i, (e, n, c) in enumerate(
                zip(options.stage_epochs, options.stage_layers, channels, strict=True)
            )
        ]

    def start_stage(self, stage: int, previous: SearchAlgorithm | None) -> None:
        """Called on a stage's new algorithm; with ``carry_alphas`` it takes the previous stage's alphas."""
        self.stage = stage
        if isinstance(previous, PDARTS) and self.options.carry_alphas:
            with torch.no_grad():
                for t, alpha in self.alphas.items():
                    alpha.copy_(previous.alphas[t])
                if self.edge_norm is not None and previous.edge_norm is not None:  # edges persist
                    for t, beta in self.edge_norm.betas.items():
                        beta.copy_(previous.edge_norm.betas[t])

    def next_candidates(self) -> dict[str, list[list[int]]]:
        """After this stage, every edge keeps its ``keep_ops[stage]`` best candidates by softmax(alpha)
        (``none`` may stay; it can never be the genotype's op)."""
        keep = self.options.keep_ops[self.stage]
        weights = self.arch_weights()
        out: dict[str, list[list[int]]] = {}
        for t in self.space.cell_types:
            w = weights[t].detach().double().cpu()
            rows = []
            for e in range(self.space.num_edges):
                candidates = self.space.edge_ops(t, e)
                if keep > len(candidates):
                    raise ConfigError(
                        f"option keep_ops (--keep-ops) keeps {keep} ops after stage {self.stage + 1}, but "
                        f"the edges have only {len(candidates)} candidates there; lower it"
                    )
                row = [float(v) for v in w[e]]
                ranked = sorted(candidates, key=lambda k: (-row[k], k))[:keep]
                if all(self.space.ops[k] == "none" for k in ranked):  # an edge needs an op that computes
                    ranked = sorted(candidates, key=lambda k: (self.space.ops[k] == "none", -row[k], k))[
                        :keep
                    ]
                rows.append(sorted(ranked))
            out[t] = rows
        return out

    # ------------------------------------------------------------------------------------- schedules
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.epoch_in_stage = epoch

    def updates_architecture(self, epoch: int) -> bool:
        return epoch >= self.options.warmup_epochs

    def epoch_settings(self, epoch: int, num_epochs: int) -> dict[str, float]:
        rate = self.options.skip_dropout[self.stage]
        return {"skip_dropout": skip_dropout_rate(rate, epoch, num_epochs, self.options.warmup_epochs)}

    # ------------------------------------------------------------------------------------ derivation
    def derive(self) -> Genotype:
        """The DARTS rule (or grouping) on the candidates, then at most ``max_skip`` skip-connects in each
        normal-cell type separately (Chen et al. 2019, "Search Space Regularization"; every one of the
        thesis' normal-cell types, Paganucci 2020, section 3.3.2); the reduction cell is not limited."""
        with torch.no_grad():
            weights = {t: w.detach().double().cpu().clone() for t, w in self.arch_weights().items()}
        rule: DerivationRule = self.options.derive
        cells = {
            t: derive_darts_cell(weights[t], self.space, cell_type=t, rule=rule)
            for t in self.space.cell_types
        }
        for t in self.space.normal_types:
            cells[t] = self._limit_skips(weights[t], cells[t], t, rule)
        return Genotype.from_cells(
            [cells[t] for t in self.space.normal_types], cells["reduce"], allow_dangling=True
        )  # a derived cell may leave nodes out of a concat shorter than the nodes (multiplier < nodes)

    def _limit_skips(
        self, w: torch.Tensor, cell: CellGenotype, cell_type: str, rule: DerivationRule
    ) -> CellGenotype:
        if "skip_connect" not in self.space.ops:
            return cell
        skip = self.space.op_index("skip_connect")
        edge_of = {(e.node, e.source): e.index for e in self.space.edges}
        lowered: set[int] = set()
        while cell.count_op("skip_connect") > self.options.max_skip:
            chosen = [
                edge_of[(n, i)] for n, node in enumerate(cell.nodes) for op, i in node if op == "skip_connect"
            ]
            open_edges = [e for e in chosen if e not in lowered]
            if not open_edges:  # only skip candidates left where the nodes need inputs: nothing to replace
                break
            weakest = min(open_edges, key=lambda e: (float(w[e, skip]), e))
            w[weakest, skip] = -1.0  # below every real weight: the edge takes its next best op
            lowered.add(weakest)
            cell = derive_darts_cell(w, self.space, cell_type=cell_type, rule=rule)
        return cell
