"""The shared bilevel search loop (Alg. 1 of Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019).

Each iteration updates the architecture first (on a batch of the architecture half of the split),
then the weights (on a batch of the weight half). Weights: SGD with momentum and weight decay, a cosine
schedule and gradient-norm clipping; architecture: Adam. Every method plugs in as a
:class:`~fastnas.algorithms.SearchAlgorithm` and reuses this loop unchanged.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``alphas.jsonl`` (the
edge weights after each epoch; every file numbers epochs from 1, as the log does, see
:data:`~fastnas.train.run_state.EPOCH_BASE`), ``checkpoint.pt`` (written atomically after every epoch),
``genotype.json`` / ``genotype.txt`` and ``log.txt``. ``resume_search(run_dir)`` continues a killed run;
all randomness of an epoch is seeded from (seed, epoch), so a resumed run ends with the same
architecture parameters and genotype as an uninterrupted one. Checkpoints carry a checksum and the
previous one is kept (:mod:`fastnas.train.run_state`); a loss that becomes NaN or infinite (of the
architecture step, the weight step or the validation pass) stops the run with a message naming the epoch,
the step and the level, and a state that is no longer finite (BatchNorm statistics, weights, optimiser
moments) stops it before its checkpoint or history is written: a checkpoint always holds a finite state.

Each checkpoint records the run's id and resolved settings (``"config"``); ``resume_search`` refuses a
checkpoint of another run, a ``config.json`` edited since (a key given twice included) and a loaded state
that is not finite or whose schedule is not at its epoch, naming the setting or tensor
(:func:`~fastnas.train.checkpoint.check_run_binding`). Checkpoints of earlier versions, which record
neither, resume with a logged note.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastnas.algorithms import Architecture, SearchAlgorithm
from fastnas.algorithms.architect import unrolled_arch_gradients
from fastnas.algorithms.derivation import arch_cosine_distance
from fastnas.data.loader import EpochBatches
from fastnas.errors import CheckpointError, ConfigError, DataError
from fastnas.fileio import append_jsonl, atomic_write_json, atomic_write_text, read_json_file, read_jsonl
from fastnas.genotype import Genotype
from fastnas.methods import get_method
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace
from fastnas.spaces.base import SearchSpace
from fastnas.train.checkpoint import (
    CHECKPOINT_NAME,
    LoadedCheckpoint,
    check_counters,
    check_run_binding,
    find_non_finite,
    load_states,
    new_run_id,
    non_finite_state_error,
    numpy_rng_state,
    restoring,
    save_checkpoint,
    set_numpy_rng_state,
)
from fastnas.train.compiled import CompiledLevels, check_compilable
from fastnas.train.cuda_graph import (
    GraphedStep,
    check_cuda_graph,
    graph_optimizer_options,
    host_settings,
    tensor_lrs,
)
from fastnas.train.device import autocast, seed_everything
from fastnas.train.distributed import Distributed, distributed_session
from fastnas.train.run_state import (
    NonFiniteMonitor,
    check_run_dir_free,
    prepare_run_dir,
    resume_run,
    start_process,
)
from fastnas.train.search_config import ResolvedSearchConfig, SearchConfig
from fastnas.train.search_data import build_search_data
from fastnas.train.tensorboard import TensorBoardLog

__all__ = ["SearchResult", "SearchRunner", "resume_search", "run_search"]

Batch = tuple[torch.Tensor, torch.Tensor]

#: Keys and types a search checkpoint must have (checked before anything is loaded into the model).
CHECKPOINT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "model": dict,
    "weight_optimizer": dict,
    "arch_optimizer": dict,
    "scheduler": dict,
    "weight_scaler": dict,
    "arch_scaler": dict,
    "rng": dict,
    "genotype": dict,
    "stage": int,
    "candidates": dict,
}


@dataclass
class SearchResult:
    """What a finished search returns."""

    run_dir: Path
    genotype: Architecture  # a Genotype, or an NB201Arch on the nb201 space
    metrics: list[dict[str, Any]]
    model: SearchModel


def _repeat(loader: EpochBatches) -> Iterator[Batch]:
    while True:
        yield from loader


def stage_seed(seed: int, stage: int) -> int:
    """The seed that initialises stage ``stage``'s supernet (stages > 0), from the run's seed."""
    digest = hashlib.sha256(f"fastnas.stage:{int(seed)}:{int(stage)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated since the stage started, or on CPU the process's peak
    resident set (it never goes down, so it is the peak of the run so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sizes(space: DartsSpace) -> str:
    """``"3 ops per edge"`` or ``"2-3 ops per edge"``."""
    counts = sorted({len(space.edge_ops(t, e)) for t in space.cell_types for e in range(space.num_edges)})
    return f"{counts[0]}{'-' + str(counts[-1]) if len(counts) > 1 else ''} ops per edge"


class SearchRunner:
    """Builds data, model and optimisers from a resolved config and runs the epochs."""

    def __init__(
        self,
        config: ResolvedSearchConfig,
        run_dir: Path,
        progress: bool = True,
        device: str | None = None,
        dist: Distributed | None = None,
    ):
        self.config = config
        self.run_dir = run_dir
        process = start_process(run_dir, config.device, config.world_size, progress, device, dist)
        self.dist, self.progress, self.log, self.device = process
        algorithm = get_method(config.method).algorithm
        if config.compile:  # before any data is read: what is wrong and how to run instead
            check_compilable(algorithm)
        if config.cuda_graph:
            order = int(getattr(config.options, "order", 1))
            check_cuda_graph(self.device, algorithm, order, config.precision, self.dist.world_size)
        if config.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
        seed_everything(config.seed)

        data = build_search_data(config, self.device, self.dist.shard)
        self.weight_loader, self.arch_loader, self.eval_loader = data.weights, data.arch, data.evaluation

        self.base_space = config.build_space()
        self.table = NB201Table.load(config.nb201_table) if config.nb201_table else None
        if self.table is not None:  # a gap would only show when a derived cell falls in it, epochs later
            missing = self.table.missing(self.base_space.ops)
            if missing:
                raise DataError(
                    f"the NAS-Bench-201 table {config.nb201_table} lacks {len(missing):,} of the "
                    f"{len(self.base_space.ops) ** self.base_space.num_edges:,} cells this space can derive "
                    f"(e.g. {missing[0]}); give the full table (15,625 cells, like ../shared/data/nb201.csv)"
                )
        self.num_classes, self.in_channels = data.num_classes, data.in_channels
        self.method = get_method(config.method)
        self.stages = self.method.algorithm.stage_plans(
            config.options, config.C, config.layers, config.epochs
        )
        self.stage_starts = [sum(p.epochs for p in self.stages[:i]) for i in range(len(self.stages))]
        if sum(p.epochs for p in self.stages) != config.epochs:
            raise ConfigError(
                f"the stages of {config.method} add up to {sum(p.epochs for p in self.stages)} epochs, the "
                f"config says {config.epochs}"
            )
        self.monitor = NonFiniteMonitor(self.device, ("architecture", "weights"))
        self.eval_monitor = NonFiniteMonitor(self.device, ("validation",))
        self.start_epoch = 0  # 0-based: epochs finished; the files number epoch e as e + epoch_base
        self.epoch_base = config.epoch_base
        self.previous_arch: Architecture | None = None  # the last epoch's genotype (cosine distance)
        self._build_stage(0, self.base_space, previous=None)

    def _build_stage(self, index: int, space: SearchSpace, previous: SearchAlgorithm | None) -> None:
        """The supernet, the method and the optimisers of stage ``index`` (fresh weights, a new cosine
        schedule over the stage's epochs); the last stage's model is dropped first."""
        cfg, plan = self.config, self.stages[index]
        for name in (
            "model",
            "weight_net",
            "algorithm",
            "weight_optimizer",
            "arch_optimizer",
            "scheduler",
            "compiled",
            "graphed",
        ):
            self.__dict__.pop(name, None)  # no stage holds the last one's supernet
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        if index > 0:  # stage 0 keeps the run's seed: single-stage runs are unchanged
            seed_everything(stage_seed(cfg.seed, index))
        self.stage = index
        self.model = SearchModel.build(
            cfg.method,
            space=space,
            C=plan.C,
            layers=plan.layers,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            stem="imagenet" if cfg.dataset == "imagenet" else "cifar",  # 224 -> 28 before the cells
            options=cfg.options,
            supernet_options=cfg.supernet,
        ).to(self.device)
        self.algorithm = self.model.algorithm
        # the weight step runs through DDP under torchrun (gradients averaged in backward); the
        # architecture step calls the supernet itself and averages its own gradients
        self.weight_net = self.dist.wrap(self.model.supernet, self.device)
        self.algorithm.start_stage(index, previous)
        if cfg.supernet.executor == "fast" and isinstance(space, DartsSpace) and space.restricted:
            self.log(
                f"stage {index + 1}: the fast executor runs the plain loop of cells with per-edge candidates"
            )
        if cfg.precision == "fp16" and self.algorithm.order == 2:
            raise ConfigError(
                "second-order search does not support fp16 (no loss scaling through the "
                "virtual step); use --precision bf16 or fp32"
            )
        # --cuda-graph: capturable optimisers with their learning rates in device tensors
        weight_extra, arch_extra = (
            graph_optimizer_options(self.device, cfg.lr, cfg.arch_lr) if cfg.cuda_graph else ({}, {})
        )
        self.weight_optimizer = torch.optim.SGD(
            self.model.weight_parameters(),
            **{"lr": cfg.lr, **weight_extra},
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.arch_optimizer = torch.optim.Adam(
            self.model.arch_parameters(),
            **{"lr": cfg.arch_lr, **arch_extra},
            betas=cfg.arch_betas,
            weight_decay=cfg.arch_weight_decay,
        )
        # the configured settings of each group, restored every epoch under the method's overrides
        self.arch_group_settings = [
            {k: v for k, v in group.items() if k != "params"} for group in self.arch_optimizer.param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=plan.epochs, eta_min=cfg.lr_min
        )
        use_scaler = cfg.precision == "fp16"
        self.weight_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.arch_scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        #: --compile: the compiled forward + loss of each level (None: eager)
        self.compiled = CompiledLevels(self.model, self.weight_net) if cfg.compile else None
        #: --cuda-graph: the captured bilevel step of this stage (None: eager)
        self.graphed = GraphedStep(self._bilevel_step, self.device) if cfg.cuda_graph else None

    def stage_of(self, epoch: int) -> int:
        """The stage of ``epoch`` (0-based over the whole run)."""
        return max(i for i, start in enumerate(self.stage_starts) if start <= epoch)

    def _next_stage(self, index: int) -> None:
        """End the current stage: its method picks the next candidate sets, recorded in ``stages.json``;
        then build stage ``index`` over them."""
        candidates = self.algorithm.next_candidates()
        if not isinstance(self.base_space, DartsSpace):
            raise ConfigError(f"{self.config.method} needs a DARTS space for its stages")
        space = self.base_space.with_candidates(candidates)
        self._record_stage(self.stage, kept=space.candidates_json())
        self.log(
            f"stage {self.stage + 1}/{len(self.stages)} done; stage {index + 1} searches {_sizes(space)}"
        )
        self._build_stage(index, space, previous=self.algorithm)

    def _record_stage(self, index: int, **extra: Any) -> None:
        """Write (or rewrite) stage ``index``'s entry of ``stages.json`` (rank 0)."""
        if not self.dist.is_main:
            return
        plan, space = self.stages[index], self.model.space
        start = self.stage_starts[index]
        entry = {
            "stage": index + 1,
            "epochs": [start + 1, start + plan.epochs],
            "layers": plan.layers,
            "C": plan.C,
            "candidates": space.candidates_json() if isinstance(space, DartsSpace) else {},
            "peak_memory_mb": peak_memory_mb(self.device),
            **extra,
        }
        path = self.run_dir / "stages.json"
        stages = [
            s for s in (read_json_file(path, "") if path.exists() else []) if s.get("stage", 0) < index + 1
        ]
        atomic_write_json(path, [*stages, entry], sort_keys=False)

    # ----------------------------------------------------------------- state
    def state_dict(self, epoch: int, genotype: Architecture) -> dict[str, Any]:
        return {
            "epoch": epoch + self.epoch_base,  # the last finished epoch, numbered as in the run's files
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weight_scaler": self.weight_scaler.state_dict(),
            "arch_scaler": self.arch_scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()},
            "genotype": genotype.to_json(),
            "stage": self.stage,
            "candidates": self._stage_candidates(),
            "config": self.config.to_json(),  # the run's id and settings: resuming checks config.json
        }

    def _stage_candidates(self) -> dict[str, list[list[str]]]:
        """The candidate sets of the current stage (empty for the first stage: the whole space)."""
        space = self.model.space
        return space.candidates_json() if self.stage > 0 and isinstance(space, DartsSpace) else {}

    def load_state_dict(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Restore a checkpoint's state; a state that does not fit this run is a
        :class:`~fastnas.errors.CheckpointError` naming ``path``."""
        parts: dict[str, Any] = {
            "model": self.model,
            "weight_optimizer": self.weight_optimizer,
            "arch_optimizer": self.arch_optimizer,
            "scheduler": self.scheduler,
            "weight_scaler": self.weight_scaler,
            "arch_scaler": self.arch_scaler,
        }
        load_states(state, parts, path, "model and optimisers")
        with restoring(path, "model and optimisers"):
            if self.config.cuda_graph:  # the captured steps read their learning rates from the device
                tensor_lrs(self.weight_optimizer, self.device)
                tensor_lrs(self.arch_optimizer, self.device)
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            set_numpy_rng_state(rng["numpy"])
            random.setstate(rng["python"])
        self.start_epoch = state["epoch"] - self.epoch_base + 1

    # ----------------------------------------------------------------- steps
    def _autocast(self) -> Any:
        """The step's autocast context (no weight-cast cache under --cuda-graph: nothing may outlive a
        capture)."""
        return autocast(self.device, self.config.precision, cache_enabled=not self.config.cuda_graph)

    def _bilevel_step(
        self, batch: Batch, val_batch: Batch | None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """One first-order iteration as --cuda-graph captures it: the architecture step (none when
        ``val_batch`` is None), then the weight step."""
        arch_loss = None if val_batch is None else self.arch_step(batch, val_batch, self.config.lr)
        loss, n_correct = self.weight_step(batch)
        return arch_loss, loss, n_correct

    def arch_step(self, train_batch: Batch, val_batch: Batch, lr: float) -> torch.Tensor:
        """One architecture update (first or second order); returns the (detached) upper-level loss."""
        params = self.model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.algorithm.order == 2:
                grads, loss = unrolled_arch_gradients(
                    self.model,
                    train_batch,
                    val_batch,
                    lr,
                    self.weight_optimizer,
                    average=self.dist.average_,
                    update_bn=self.algorithm.arch_step_bn == "update",
                )
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.to(p.dtype)
            elif self.compiled is not None:
                loss = self.compiled.arch_loss(*val_batch)
            else:
                loss = self.model.loss(*val_batch, level="arch")
        if self.algorithm.order != 2:
            self.arch_scaler.scale(loss).backward(inputs=params)
        self.dist.average_([p.grad for p in params])  # identical alphas on every rank
        if self.config.arch_grad_clip > 0:
            self.arch_scaler.unscale_(self.arch_optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.config.arch_grad_clip)
        self.arch_scaler.step(self.arch_optimizer)
        self.arch_scaler.update()
        self.algorithm.after_arch_step()
        return loss.detach()

    def weight_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One weight update; returns the (detached) loss and the number of correct predictions."""
        x, y = batch
        params = self.model.weight_parameters()
        self.weight_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.compiled is not None:
                loss, n_correct = self.compiled.weight_loss(x, y)
            else:
                logits = self.model.forward_with(self.weight_net, x)
                loss = self.model.criterion(logits, y, "weights")
                n_correct = (logits.argmax(1) == y).sum()
        self.weight_scaler.scale(loss).backward(inputs=params)
        if self.config.grad_clip > 0:
            self.weight_scaler.unscale_(self.weight_optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.weight_scaler.step(self.weight_optimizer)
        self.weight_scaler.update()
        return loss.detach(), n_correct

    @torch.no_grad()
    def evaluate(self, epoch: int) -> tuple[float, float]:
        """Loss and accuracy (%) of the supernet on the architecture half, without augmentation, after
        ``epoch`` (0-based); a NaN or infinite validation loss raises
        :class:`~fastnas.errors.NonFiniteError` naming the epoch and the step."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        self.eval_loader.set_epoch(0)
        self.eval_monitor.reset()
        for step, (x, y) in enumerate(self.eval_loader):
            with autocast(self.device, self.config.precision):
                logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            self.eval_monitor.observe("validation", step, loss)
            total_loss += loss.double()
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
        self.model.train()
        self.eval_monitor.check(epoch)
        loss_sum, n_correct, n = self.dist.sum([total_loss, correct, count], self.device)  # over the shards
        return loss_sum / n, 100.0 * n_correct / n

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (``epoch`` counts over the whole run; schedules see the epoch within its stage)."""
        cfg = self.config
        self.model.train()
        stage_epoch, stage_epochs = epoch - self.stage_starts[self.stage], self.stages[self.stage].epochs
        self.model.start_epoch(stage_epoch, stage_epochs)
        lr = float(self.scheduler.get_last_lr()[0])
        self.weight_loader.set_epoch(epoch)
        self.arch_loader.set_epoch(epoch)
        arch_batches = _repeat(self.arch_loader)
        update_arch = self.algorithm.updates_architecture(stage_epoch)
        overrides = self.algorithm.arch_optimizer_settings(stage_epoch)
        for group, configured in zip(self.arch_optimizer.param_groups, self.arch_group_settings, strict=True):
            group.update(configured)  # a checkpoint may hold an earlier epoch's overrides
            for name, value in overrides.items():
                if name not in group:
                    raise ConfigError(
                        f"{self.algorithm.name} sets arch optimiser setting {name!r}, which Adam lacks"
                    )
                group[name] = value
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        self.monitor.reset()
        bar = tqdm(
            total=len(self.weight_loader),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        waited = [0.0]  # seconds spent waiting for batches (the data pipeline's share of the epoch)

        def timed(batches: Iterator[Batch]) -> Iterator[Batch]:
            while True:
                asked = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                waited[0] += time.perf_counter() - asked
                yield batch

        arch_batches = timed(arch_batches)
        # --cuda-graph: what the captured step bakes in from the host (a change captures it again)
        capture_key = (
            host_settings(
                update_arch,
                self.algorithm.epoch_settings(stage_epoch, stage_epochs),
                (self.weight_optimizer, self.arch_optimizer),
            )
            if self.graphed is not None
            else None
        )
        started = time.perf_counter()
        for step, batch in enumerate(timed(iter(self.weight_loader))):
            val_batch = next(arch_batches)
            self.model.start_step(stage_epoch, step)  # a sampling method draws this step's sub-graph
            if self.graphed is not None:
                arch_batch = val_batch if update_arch else None
                arch_loss, loss, n_correct = self.graphed(batch, arch_batch, capture_key)
                if arch_loss is not None:
                    self.monitor.observe("architecture", step, arch_loss)
            else:
                if update_arch:
                    self.monitor.observe("architecture", step, self.arch_step(batch, val_batch, lr))
                loss, n_correct = self.weight_step(batch)
            self.monitor.observe("weights", step, loss)
            loss_sum += loss.double() * len(batch[1])
            correct += n_correct
            seen += len(batch[1])
            bar.update(1)
            if self.progress and (step % 10 == 0 or step == len(self.weight_loader) - 1):  # syncs anyway
                self.monitor.check(epoch)
                bar.set_postfix(
                    loss=f"{float(loss_sum) / seen:.3f}", acc=f"{100.0 * float(correct) / seen:.1f}"
                )
        bar.close()
        self.monitor.check(epoch)
        self.scheduler.step()
        elapsed = time.perf_counter() - started
        total_loss, total_correct, total_seen = self.dist.sum([loss_sum, correct, seen], self.device)
        return {
            "train_loss": total_loss / total_seen,
            "train_acc": 100.0 * total_correct / total_seen,
            "lr": lr,
            "images_per_s": total_seen / max(elapsed, 1e-9),  # weight-step images per second, all ranks
            "data_wait_s": waited[0],
        }

    def write_consistency(self) -> None:
        """Super-net vs child-net validation accuracy (Yang et al., CVPR 2021, Table 1) ->
        ``consistency.json``."""
        from fastnas.train.consistency import measure_consistency

        self.eval_loader.set_epoch(0)
        result = measure_consistency(
            self.model, self.eval_loader, self.device, self.config.precision, sum_over=self.dist.sum
        )
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "consistency.json", result)
        self.log(
            f"consistency: super-net acc {result['super_acc']:.2f}% | child-net acc "
            f"{result['child_acc']:.2f}% | drop {result['drop']:.2f}"
        )

    # ----------------------------------------------------------------- run
    @property
    def history_files(self) -> tuple[Path, ...]:
        """The run's per-epoch histories: metrics, alphas, and the method's records (``sampling.jsonl``)."""
        records = tuple(self.run_dir / f"{stem}.jsonl" for stem in self.algorithm.record_files)
        return self.run_dir / "metrics.jsonl", self.run_dir / "alphas.jsonl", *records

    def resume(self) -> None:
        """Continue from the run's newest good checkpoint, if it has one (validated before any history
        file is touched)."""
        resume_run(
            self.run_dir, CHECKPOINT_SCHEMA, self.config.epochs, self.device, self.log,
            main=self.dist.is_main, epoch_base=self.epoch_base, bind=self._check_bound,
            restore=self._restore, histories=self.history_files,
        )  # fmt: skip

    def _restore(self, loaded: LoadedCheckpoint) -> None:
        """Put a checked checkpoint into the run: its stage's supernet, counters, state and architecture."""
        self._rebuild_stage_of(loaded.state, loaded.path)
        epoch = loaded.state["epoch"] - self.epoch_base  # 0-based, checked by open_checkpoint
        check_counters(
            loaded.state,
            loaded.path,
            epoch=epoch + 1,
            schedules={"scheduler": epoch - self.stage_starts[self.stage] + 1},  # one step per epoch
            scalers=("weight_scaler", "arch_scaler"),
        )
        self.load_state_dict(loaded.state, loaded.path)
        self.previous_arch = self._architecture_from_json(loaded.state["genotype"], loaded.path)

    def _check_bound(self, loaded: LoadedCheckpoint) -> None:
        """The checkpoint must be this run's, and ``config.json`` must give the settings it was written
        with (:func:`~fastnas.train.checkpoint.check_run_binding`)."""
        recorded = loaded.state.get("config")
        settings = None
        if recorded is not None:
            if not isinstance(recorded, dict):
                raise CheckpointError(
                    f"checkpoint {loaded.path}: 'config' should be dict but is {type(recorded).__name__}; "
                    "start the run again"
                )
            try:  # normalised as config.json is (keys added since filled in)
                settings = ResolvedSearchConfig.from_json(recorded, f"checkpoint {loaded.path}").to_json()
            except ConfigError:  # e.g. its nb201_table moved: compared as written
                settings = recorded
        check_run_binding(
            loaded.path,
            settings,
            self.config.to_json(),
            self.run_dir / "config.json",
            self.log,
            recorded_run_id=recorded.get("run_id") if isinstance(recorded, dict) else None,
        )

    def _rebuild_stage_of(self, state: dict[str, Any], path: Path) -> None:
        """A checkpoint of a later stage needs that stage's supernet (its depth and candidate sets)."""
        stage, epoch = state["stage"], state["epoch"] - self.epoch_base  # 0-based
        if not 0 <= stage < len(self.stages) or self.stage_of(epoch) != stage:
            raise CheckpointError(
                f"{path} says epoch {epoch + 1} belongs to stage {stage + 1}, but this run's stages "
                f"({len(self.stages)}) place it in stage {self.stage_of(epoch) + 1}; start the run again"
            )
        if stage == 0:
            return
        if not isinstance(self.base_space, DartsSpace):
            raise CheckpointError(f"{path} is of stage {stage + 1}, but this run's space has no stages")
        try:
            space = self.base_space.with_candidates(state["candidates"])
        except (ConfigError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path}: its candidate sets do not fit this run's space ({exc})") from None
        self._build_stage(stage, space, previous=None)  # the checkpoint holds the stage's alphas

    def _architecture_from_json(self, data: dict[str, Any], path: Path) -> Architecture:
        """The genotype a checkpoint recorded (the last epoch's, for the next epoch's cosine distance)."""
        try:
            if isinstance(self.base_space, DartsSpace):
                return Genotype.from_json(data)
            return NB201Arch.from_json(data)
        except ValueError as exc:
            raise CheckpointError(f"{path}: its genotype is malformed ({exc}); start the run again") from None

    def _check_finite_state(self, epoch: int, genotype: Architecture) -> None:
        """The state the checkpoint of ``epoch`` (0-based) would hold must be finite on every process: a
        :class:`~fastnas.errors.NonFiniteError` naming the first tensor that is not, before anything of
        the epoch is written (the last good checkpoint stays)."""
        bad = find_non_finite(self.state_dict(epoch, genotype))
        if self.dist.sum([bad is not None], self.device)[0]:
            raise non_finite_state_error(bad, epoch + 1)

    def _write_records(self, epoch: int) -> None:
        """Append the method's records of ``epoch`` (e.g. DDSAS's resamples) to their JSON-lines files,
        numbering ``epoch`` and a record's ``stage_epoch`` (0-based in the algorithm) as the run's files
        do."""
        for stem, record in self.algorithm.drain_records():
            if stem not in self.algorithm.record_files:
                raise ConfigError(f"{self.algorithm.name} wrote a {stem!r} record it does not declare")
            if "stage_epoch" in record:
                record = {**record, "stage_epoch": record["stage_epoch"] + self.epoch_base}
            if self.dist.is_main:
                append_jsonl(self.run_dir / f"{stem}.jsonl", {"epoch": epoch + self.epoch_base, **record})

    def run(self) -> SearchResult:
        cfg = self.config
        metrics_path, alphas_path = self.history_files[:2]
        staged = len(self.stages) > 1
        if self.start_epoch >= cfg.epochs:
            self.log(f"run {self.run_dir} already finished ({cfg.epochs} epochs)")
        board = (
            TensorBoardLog(self.run_dir, self.start_epoch) if cfg.tensorboard and self.dist.is_main else None
        )
        for epoch in range(self.start_epoch, cfg.epochs):
            if self.stage_of(epoch) != self.stage:
                self._next_stage(self.stage_of(epoch))
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + self.epoch_base, **self.train_epoch(epoch)}
            if staged:
                row["stage"] = self.stage + 1
                row["stage_epoch"] = epoch - self.stage_starts[self.stage] + 1
            row["val_loss"], row["val_acc"] = self.evaluate(epoch)
            genotype = self.algorithm.derive()
            entropy = self.algorithm.arch_entropy()
            previous, self.previous_arch = self.previous_arch, genotype
            row.update(
                {
                    "alpha_entropy": entropy,
                    "genotype": genotype.to_literal(),
                    # the skip-collapse diagnostic (DDSAS appendix, figure B.3): normal cell / NB201 cell
                    "skip_connect_count": genotype.count_op("skip_connect"),
                    # exploration vs exploitation (DDSAS appendix B.5); None in the first epoch
                    "arch_cosine_distance": None
                    if previous is None
                    else arch_cosine_distance(previous, genotype),
                    "epoch_time_s": time.perf_counter() - started,
                    "peak_memory_mb": peak_memory_mb(self.device),
                }
            )
            if self.table is not None and isinstance(genotype, NB201Arch):
                row["table"] = dataclasses.asdict(self.table.lookup(genotype))
            self.dist.check_identical(
                self.model.arch_parameters(), f"the architecture after epoch {epoch + 1}"
            )
            self._check_finite_state(epoch, genotype)  # nothing of the epoch is written otherwise
            # history first: a kill before the checkpoint redoes this epoch and trims its rows on resume
            if self.dist.is_main:  # rank 0 alone writes the run directory
                append_jsonl(metrics_path, row)
                snapshot = self.algorithm.arch_snapshot()
                append_jsonl(alphas_path, {"epoch": epoch + self.epoch_base, **snapshot})
            self._write_records(epoch)
            if self.dist.is_main:
                save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict(epoch, genotype))
            if board is not None:
                board.epoch(epoch, row, self.algorithm.recorded_weights())
            ent = " ".join(f"{k}={v:.3f}" for k, v in entropy.items())
            table = ""
            if "table" in row:
                table = f" | NB201 CIFAR-10 test acc {row['table']['c10_test']}"
            stage = f"stage {self.stage + 1}/{len(self.stages)} " if staged else ""
            self.log(
                f"{stage}epoch {epoch + 1}/{cfg.epochs} | train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.2f}% "
                f"| val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}% | lr {row['lr']:.5f} "
                f"| entropy {ent} | skips {row['skip_connect_count']}{table} | {row['epoch_time_s']:.1f}s "
                f"| {row['images_per_s']:.0f} img/s, {row['data_wait_s']:.1f}s waiting for data"
                f"\n  genotype = {row['genotype']}"
            )
        if board is not None:
            board.close()
        genotype = self.algorithm.derive()
        if staged:
            self._record_stage(self.stage, genotype=genotype.to_literal())
        if self.dist.is_main:
            genotype.save_json(self.run_dir / "genotype.json")
            atomic_write_text(self.run_dir / "genotype.txt", genotype.to_literal() + "\n")
        self.write_consistency()
        self.dist.barrier()  # every rank returns once rank 0 has written the run's last files
        return SearchResult(self.run_dir, genotype, read_jsonl(metrics_path), self.model)


def run_search(config: SearchConfig, progress: bool = True, overwrite: bool = False) -> SearchResult:
    """Run a search from scratch; returns the final genotype and the run directory. An existing,
    non-empty run directory is refused unless ``overwrite``. Under torchrun every process calls this; they
    share rank 0's run name and rank 0 alone writes the run directory."""
    with distributed_session(config.device, config.dist_backend) as dist:
        resolved = config.resolved()
        run_name, run_id = dist.broadcast((resolved.run_name, new_run_id()))
        resolved = dataclasses.replace(resolved, run_name=run_name, run_id=run_id)
        run_dir = resolved.run_dir
        check_run_dir_free(run_dir, overwrite, "search")
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        # data and device errors come first
        runner = SearchRunner(resolved, run_dir, progress=progress, dist=dist)
        if dist.is_main:
            prepare_run_dir(run_dir, overwrite)
            atomic_write_json(run_dir / "config.json", resolved.to_json())
        where = f" on {dist.world_size} processes ({dist.backend})" if dist.enabled else ""
        runner.log(f"fastnas search: {resolved.method} on {resolved.dataset}{where}, run directory {run_dir}")
        return runner.run()


def resume_search(run_dir: str | Path, progress: bool = True, device: str | None = None) -> SearchResult:
    """Continue the run in ``run_dir`` from its last good checkpoint (or finish it if already done)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run directory (no such folder)")
    config = ResolvedSearchConfig.read_run(
        run_dir,
        foreign_key="auxiliary_weight",
        foreign=(
            f"a retraining run directory, not a search one; continue it with `fastnas train --resume "
            f"{run_dir}`"
        ),
    )
    with distributed_session(device or config.device, config.dist_backend) as dist:
        runner = SearchRunner(config, run_dir, progress=progress, device=device, dist=dist)
        runner.resume()
        return runner.run()
