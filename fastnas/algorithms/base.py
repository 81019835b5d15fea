"""The interface every search method implements (a method owns its architecture
parameters, how they become edge weights, its extra loss terms, its schedules and its derivation
rule; it does not own the training loop)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from fastnas.algorithms.options import MethodOptions
from fastnas.errors import ConfigError
from fastnas.genotype import Genotype
from fastnas.nb201.arch import NB201Arch
from fastnas.spaces.base import SearchSpace

__all__ = ["Architecture", "SearchAlgorithm", "SearchDefaults", "StagePlan"]

Architecture = Genotype | NB201Arch
"""What a derivation returns: a DARTS-space genotype or a NAS-Bench-201 cell."""


@dataclass(frozen=True)
class SearchDefaults:
    """A method's published search hyper-parameters (CIFAR-10 unless noted).

    ``arch_grad_clip`` 0 means no clipping of the architecture gradients (P-DARTS clips them to 5).
    """

    epochs: int = 50
    batch_size: int = 64
    C: int = 16
    layers: int = 8
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_grad_clip: float = 0.0
    train_portion: float = 0.5

    def updated(self, **overrides: Any) -> SearchDefaults:
        """A copy with the non-None ``overrides`` applied (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown search hyper-parameter(s) {unknown}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class StagePlan:
    """One stage of a search: its epochs and the depth and width of its supernet. Most methods run one
    stage; P-DARTS runs several, each on a new supernet over the candidate sets the last one left."""

    index: int
    epochs: int
    layers: int
    C: int


class SearchAlgorithm(nn.Module, abc.ABC):
    """Base class of a search method. Its parameters are the architecture parameters.

    A subclass sets :attr:`name`, :attr:`Options` (its options dataclass, declared once) and
    :attr:`defaults` (its published hyper-parameters); it is built as ``Method(space, options)`` or
    ``Method(space, **option_values)``.
    """

    name: ClassVar[str] = "base"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    defaults: ClassVar[SearchDefaults] = SearchDefaults()
    #: published hyper-parameters that differ by dataset (e.g. ``{"imagenet": ...}``); else ``defaults``
    dataset_defaults: ClassVar[Mapping[str, SearchDefaults]] = {}
    #: the method's published supernet options (:class:`fastnas.nn.SupernetOptions` names, e.g. PC-DARTS'
    #: ``{"partial_k": 4}``); the options' own defaults apply to the rest
    supernet_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, space: SearchSpace, options: MethodOptions | None = None, **option_values: Any):
        super().__init__()
        if options is None:
            options = self.Options.from_mapping(option_values)
        elif option_values:
            raise TypeError("give either an options object or option values, not both")
        if not isinstance(options, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        self.space = self.prepare_space(space)
        #: 1 = first-order architecture gradient, 2 = DARTS second order (unrolled).
        self.order = 1
        #: the second-order step's BN rule: "update" (the DARTS code) or "frozen" (SecondOrderOptions)
        self.arch_step_bn = "update"

    @classmethod
    def prepare_space(cls, space: SearchSpace) -> SearchSpace:
        """The space this method searches, given the user's (check it, or adapt it: EnTranNAS-DST
        drops ``none``). The supernet is built on the prepared space."""
        return space

    @classmethod
    def defaults_for(cls, dataset: str) -> SearchDefaults:
        """The published hyper-parameters of a search on ``dataset``."""
        return cls.dataset_defaults.get(dataset, cls.defaults)

    @classmethod
    def adjust_hyper(cls, hyper: SearchDefaults, options: Any, given: Mapping[str, Any]) -> SearchDefaults:
        """The run's hyper-parameters, given its options and the values the user set (``given``, None where
        unset); a method whose options determine some of them (stages) fills them in here."""
        return hyper

    @classmethod
    def check_schedule(cls, options: Any, epochs: int) -> None:
        """Refuse options that a run of ``epochs`` search epochs would make useless (raise
        :class:`~fastnas.errors.ConfigError`), such as weight-only epochs that cover the whole search;
        called on every new run once its epochs are known. None by default."""

    @classmethod
    def stage_plans(cls, options: Any, C: int, layers: int, epochs: int) -> list[StagePlan]:
        """The stages of the run: one stage of ``epochs`` on a supernet of ``layers`` cells by default."""
        return [StagePlan(index=0, epochs=epochs, layers=layers, C=C)]

    def start_stage(self, stage: int, previous: SearchAlgorithm | None) -> None:
        """Called on a stage's new algorithm (``previous``: the last stage's, None for the first)."""

    def next_candidates(self) -> dict[str, list[list[int]]]:
        """Per cell type and edge, the op indices the next stage keeps (multi-stage methods only)."""
        raise NotImplementedError(f"{self.name} runs a single stage")

    def on_step(self, epoch: int, step: int) -> None:
        """Called before each iteration (architecture step, then weight step) of ``epoch``: methods that
        sample a sub-graph per step (EDAS) or every few steps (DDSAS) draw it here. A custom training
        loop must call it (through :meth:`fastnas.SearchModel.start_step`) every iteration, or such a
        method keeps the sub-graph it drew first."""

    def active_set(self) -> dict[str, torch.Tensor] | None:
        """Host-side bool masks ``{cell_type: [num_edges, num_ops]}`` of the (edge, op) pairs that run this
        step (inactive ops are never called), or None: every op runs."""
        return None

    def after_arch_step(self) -> None:
        """Called after each architecture update (EDAS keeps the unsampled edges' alphas unchanged)."""

    def arch_optimizer_settings(self, epoch: int) -> dict[str, float]:
        """Architecture-optimiser settings for ``epoch`` of the stage (e.g. EDAS's warm-up weight
        decay), applied to every parameter group; a setting not returned takes the run's configured
        value again. None by default."""
        return {}

    #: JSON-lines files (stems) the method writes through :meth:`drain_records`, e.g. ``("sampling",)``.
    record_files: ClassVar[tuple[str, ...]] = ()
    #: True when a step may leave supernet weights out of its graph (a sampled sub-graph, EnTranNAS'
    #: Engine-cells): DistributedDataParallel must then look for unused parameters every step.
    leaves_weights_unused: ClassVar[bool] = False
    #: True when the ops a step runs are chosen on the host every step (EDAS and DDSAS draw them in
    #: :meth:`on_step`; EnTranNAS' Transit-cells read the current weights): the step's graph changes from
    #: step to step, so ``--compile`` and ``--cuda-graph`` refuse the method.
    samples_subgraphs: ClassVar[bool] = False

    def drain_records(self) -> list[tuple[str, dict[str, Any]]]:
        """``(file stem, row)`` records since the last call; the loop adds the row's ``epoch`` and appends
        them to ``<stem>.jsonl`` after every epoch. A row's ``stage_epoch``, if it has one, counts from 0
        like the algorithm's epochs; the loop writes it numbered as the run's files (from 1)."""
        return []

    def epoch_settings(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Supernet settings for ``epoch`` of its stage (e.g. ``{"skip_dropout": 0.1}``), applied by
        :meth:`fastnas.SearchModel.start_epoch`; none by default."""
        return {}

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    @abc.abstractmethod
    def arch_weights(self) -> dict[str, torch.Tensor]:
        """Edge weights ``{cell_type: Tensor[num_edges, num_ops]}`` for the next forward pass."""

    def extra_arch_loss(self) -> torch.Tensor | None:
        """A regulariser added to the upper-level (architecture) loss, or None."""
        return None

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Advance per-epoch schedules (temperatures, warm-ups)."""

    def updates_architecture(self, epoch: int) -> bool:
        """Whether the architecture is trained during ``epoch`` (0-based)."""
        return True

    @abc.abstractmethod
    def derive(self) -> Architecture:
        """The discrete architecture the current parameters select."""

    def recorded_weights(self) -> dict[str, torch.Tensor]:
        """The edge weights the run's history and entropy report: those the derivation ranks. By default
        :meth:`arch_weights`; sampling methods (EDAS, DDSAS) whose step weights cover only a sub-graph
        override it."""
        return self.arch_weights()

    def arch_entropy(self) -> dict[str, float]:
        """Mean per-edge entropy of the recorded edge weights, per cell type (a convergence diagnostic)."""
        out = {}
        for cell_type, w in self.recorded_weights().items():
            p = w.detach().float().clamp_min(1e-12)
            p = p / p.sum(-1, keepdim=True)
            out[cell_type] = float(-(p * p.log()).sum(-1).mean())
        return out

    def arch_snapshot(self) -> dict[str, Any]:
        """The raw architecture parameters and the edge weights they give, as nested lists (the run
        directory's alpha history)."""
        return {
            "parameters": {n: p.detach().float().cpu().tolist() for n, p in self.named_parameters()},
            "weights": {t: w.detach().float().cpu().tolist() for t, w in self.recorded_weights().items()},
        }

    def extra_repr(self) -> str:
        return f"order={self.order}, ops={list(self.space.ops)}, options={self.options.to_json()}"
