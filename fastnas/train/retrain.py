"""Retraining a genotype's evaluation network with the published recipe (that of Liu, Simonyan & Yang,
"DARTS: Differentiable Architecture Search", ICLR 2019).

SGD with momentum and weight decay, cosine (CIFAR) or x0.97-per-epoch (ImageNet) learning-rate schedule,
gradient-norm clipping, loss = CE(main) + ``auxiliary_weight`` * CE(auxiliary head) (with label smoothing
where the recipe has it), drop path ``drop_path * epoch / epochs``, cutout. On CUDA: autocast (bf16 by
default, fp16 with a GradScaler), channels-last memory and the fused SGD.

A run directory holds ``config.json`` (resolved), ``genotype.json`` / ``genotype.txt``, ``metrics.jsonl``
(one line per epoch, numbered from 1 as in the log: :data:`~fastnas.train.run_state.EPOCH_BASE`),
``checkpoint.pt`` (atomic, after every epoch; it also carries the config and the genotype, so it can be
evaluated on its own), ``log.txt`` and, at the end, ``result.json`` (test top-1 / top-5, parameters,
FLOPs). All randomness of epoch ``e`` (batch order, augmentation, drop-path masks) is
seeded from ``(seed, e)``, so :func:`resume_train` after a crash ends exactly like an uninterrupted run
(on CPU, with deterministic kernels). :func:`evaluate_checkpoint` is the evaluation-only mode.

A checkpoint is bound to its run: its config carries the run's id (``run_id``, also in ``config.json``),
and :func:`resume_train` and :func:`evaluate_checkpoint` (of a checkpoint inside a run directory) refuse a
checkpoint of another run, a ``config.json`` edited since the checkpoint was written (a key given twice
included) and a ``genotype.json`` that is not the architecture the checkpoint trained, naming the setting
or the first edge that differs (:func:`~fastnas.train.checkpoint.check_run_binding`). Loaded weights,
BatchNorm statistics and optimiser moments must be finite and the schedule at the checkpoint's epoch. A
training or test loss that becomes NaN or infinite stops the run naming the epoch and the step, and a
state that is not finite after an epoch (BatchNorm running statistics overflow long before a loss does)
stops it before that epoch's checkpoint or history is written. Checkpoints of earlier versions carry no
run id: they are accepted with a logged note, their settings still compared.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastnas.data import TensorBatchLoader, limit_indices, load_dataset
from fastnas.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from fastnas.fileio import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from fastnas.genotype import Genotype, load_genotype
from fastnas.nn.counting import count_flops, count_parameters, count_parameters_without_auxiliary
from fastnas.nn.eval_network import NetworkCIFAR, NetworkImageNet, build_eval_network
from fastnas.train.checkpoint import (
    CHECKPOINT_NAME,
    LoadedCheckpoint,
    check_counters,
    check_epoch,
    check_finite,
    check_run_binding,
    check_state,
    find_non_finite,
    load_checkpoint,
    load_states,
    new_run_id,
    non_finite_state_error,
    read_run_config,
    save_checkpoint,
)
from fastnas.train.device import autocast, resolve_device, seed_everything
from fastnas.train.distributed import Distributed, distributed_session
from fastnas.train.retrain_config import DATASET_SHAPES, ResolvedTrainConfig, TrainConfig, genotype_label
from fastnas.train.run_state import (
    NonFiniteMonitor,
    check_run_dir_free,
    prepare_run_dir,
    resume_run,
    start_process,
)
from fastnas.train.tensorboard import TensorBoardLog

__all__ = [
    "TrainResult",
    "TrainRunner",
    "evaluate_checkpoint",
    "evaluate_model",
    "resolve_precision",
    "resume_train",
    "run_train",
    "training_loss",
]

Loader = Any  # TensorBatchLoader or FolderBatchLoader: set_epoch, len, iteration of (x, y) on the device


@dataclass
class TrainResult:
    """What a finished retraining returns: the run directory, the per-epoch metrics, ``result.json``'s
    content and the trained model."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    result: dict[str, Any]
    model: torch.nn.Module


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; other values pass through."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def training_loss(
    logits: torch.Tensor,
    logits_aux: torch.Tensor | None,
    target: torch.Tensor,
    auxiliary_weight: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE(main) + ``auxiliary_weight`` * CE(auxiliary) (the second term only with auxiliary logits)."""
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if logits_aux is not None and auxiliary_weight:
        loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, target, label_smoothing=label_smoothing)
    return loss


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"fastnas.retrain:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ------------------------------------------------------------------------------------------------ data


def build_loaders(
    config: ResolvedTrainConfig, device: torch.device, train: bool = True, shard: tuple[int, int] = (0, 1)
) -> tuple[Loader | None, Loader, int, int]:
    """``(train_loader or None, test_loader, num_classes, in_channels)`` for a resolved config;
    ``shard=(rank, world_size)`` loads that process's share of each epoch (torchrun)."""
    if config.loader == "dali":
        from fastnas.data.dali import require_dali

        require_dali()
    if config.dataset == "imagenet":
        from fastnas.data.imagenet import FolderBatchLoader, load_imagenet_folder

        def folder_loader(data: Any, shuffle: bool, limit: int | None) -> Loader:
            if config.loader == "dali":
                from fastnas.data.dali import DaliFolderLoader

                kept = FolderBatchLoader(
                    data, 1, shuffle=False, seed=0, limit=limit
                ).dataset  # --limit's subset
                return DaliFolderLoader.from_dataset(
                    kept, config.batch_size, train=shuffle, seed=config.seed, device=device,
                    workers=config.workers, shard=shard,
                )  # fmt: skip
            return FolderBatchLoader(
                data,
                batch_size=config.batch_size,
                device=device,
                workers=config.workers,
                shuffle=shuffle,
                seed=config.seed,
                limit=limit,
                shard=shard,
            )

        test_set = load_imagenet_folder(config.data_dir, "test")
        test_loader: Loader = folder_loader(test_set, shuffle=False, limit=config.test_limit)
        train_loader: Loader | None = None
        if train:
            train_set = load_imagenet_folder(config.data_dir, "train")
            if list(train_set.classes) != list(test_set.classes):
                raise DataError(
                    f"ImageNet train/ and val/ have different class folders ({len(train_set.classes)} vs "
                    f"{len(test_set.classes)}); val/ must use the same <wnid>/ folders as train/"
                )
            train_loader = folder_loader(train_set, shuffle=True, limit=config.limit)
        return train_loader, test_loader, len(test_set.classes), 3
    test_data = load_dataset(config.dataset, config.data_dir, split="test", download=config.download)
    test_loader = TensorBatchLoader(
        test_data,
        limit_indices(torch.arange(len(test_data)), config.test_limit),
        config.batch_size,
        augment=False,
        shuffle=False,
        seed=config.seed,
        device=device,
        shard=shard,
    )
    train_loader = None
    if train:
        train_data = load_dataset(config.dataset, config.data_dir, split="train", download=config.download)
        indices = limit_indices(torch.arange(len(train_data)), config.limit)
        per_shard = len(indices) // shard[1]
        train_loader = TensorBatchLoader(
            train_data,
            indices,
            config.batch_size,
            augment=True,
            shuffle=True,
            seed=config.seed,
            device=device,
            # a last batch of one image would break BatchNorm in training mode
            drop_last=per_shard % config.batch_size == 1,
            cutout=config.cutout,
            shard=shard,
        )
    return train_loader, test_loader, test_data.num_classes, test_data.in_channels


def build_model(
    config: ResolvedTrainConfig, genotype: Genotype, num_classes: int, in_channels: int
) -> NetworkCIFAR | NetworkImageNet:
    """The evaluation network of a resolved config; the auxiliary head exists when ``config.auxiliary``
    is on and its weight is positive."""
    auxiliary = bool(config.auxiliary and config.auxiliary_weight > 0)
    return build_eval_network(
        genotype, config.network, config.C, config.layers, num_classes, auxiliary, in_channels
    )


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    loader: Loader,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    sum_over: Callable[[Sequence[float | int | torch.Tensor], torch.device], list[float]] | None = None,
    monitor: NonFiniteMonitor | None = None,
) -> dict[str, Any]:
    """Test loss and top-1 / top-5 accuracy (%) of ``model`` in eval mode over ``loader``; ``sum_over``
    adds up the totals of every process when each one tests a shard; ``monitor`` (with a ``"test"``
    level) records the first test step whose loss is not finite."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    loader.set_epoch(0)
    batches = tqdm(loader, desc="test", disable=not progress, leave=False, dynamic_ncols=True)
    for step, (x, y) in enumerate(batches):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits, _ = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        if monitor is not None:
            monitor.observe("test", step, loss)
        loss_sum += loss.double()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == y[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        count += len(y)
    model.train(was_training)
    totals: list[float | int | torch.Tensor] = [loss_sum, top1, top5, count]
    total_loss, n_top1, n_top5, n = sum_over(totals, device) if sum_over else [float(t) for t in totals]
    if n == 0:
        raise DataError("the test set is empty; check --data-dir and --test-limit")
    return {
        "test_loss": total_loss / n,
        "test_top1": 100.0 * n_top1 / n,
        "test_top5": 100.0 * n_top5 / n,
        "num_test_images": int(n),
    }


def _make_optimizer(
    model: torch.nn.Module, config: ResolvedTrainConfig, device: torch.device
) -> torch.optim.SGD:
    lr, momentum, wd = config.lr, config.momentum, config.weight_decay
    if device.type == "cuda":
        try:
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.SGD(
                model.parameters(), lr=lr, momentum=momentum, weight_decay=wd, foreach=True
            )
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: ResolvedTrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr_min)


# ---------------------------------------------------------------------------------------------- runner

#: Keys and types a retraining checkpoint must have (checked before anything is loaded).
CHECKPOINT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "config": dict,
    "genotype": dict,
    "num_classes": int,
    "in_channels": int,
}


class TrainRunner:
    """Builds data, network, optimiser and schedule from a resolved config and runs the epochs."""

    def __init__(
        self,
        config: ResolvedTrainConfig,
        genotype: Genotype,
        run_dir: Path,
        progress: bool = True,
        device: str | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.config = config
        self.genotype = genotype
        self.run_dir = run_dir
        process = start_process(run_dir, config.device, config.world_size, progress, device, dist)
        self.dist, self.progress, self.log, self.device = process
        if config.sync_bn and self.dist.enabled and self.device.type != "cuda":
            raise ConfigError(
                "--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation); drop it on CPU"
            )
        self.precision = resolve_precision(config.precision, self.device)
        self.channels_last = _toggle_on(config.channels_last, self.device.type == "cuda")
        deterministic = _toggle_on(config.deterministic, self.device.type == "cpu")
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
        self.train_loader, self.test_loader, self.num_classes, self.in_channels = build_loaders(
            config, self.device, shard=self.dist.shard
        )
        if self.train_loader is not None and len(self.train_loader) == 0:
            raise ConfigError(
                f"the training set gives no training step ({self.train_loader.num_examples} image(s) at "
                f"batch size {config.batch_size}, a last batch of one image is dropped); raise --limit"
            )
        seed_everything(config.seed)
        model = build_model(config, genotype, self.num_classes, self.in_channels)
        self.parameters = count_parameters_without_auxiliary(model)
        self.parameters_with_aux = count_parameters(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.sync_bn and self.dist.enabled:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = self.dist.wrap(self.model, self.device)  # DDP under torchrun: the training forward
        self.optimizer = _make_optimizer(self.model, config, self.device)
        self.scheduler = _make_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.monitor = NonFiniteMonitor(self.device, ("training",))
        self.test_monitor = NonFiniteMonitor(self.device, ("test",))
        self.start_epoch = 0  # 0-based: epochs finished; the files number epoch e as e + epoch_base
        self.epoch_base = config.epoch_base

    # ----------------------------------------------------------------- state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch + self.epoch_base,  # the last finished epoch, numbered as in the run's files
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_json(),
            "genotype": self.genotype.to_json(),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path | None = None) -> None:
        parts = {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }
        load_states(state, parts, path, "network and optimiser")
        self.start_epoch = state["epoch"] - self.epoch_base + 1

    def resume(self) -> None:
        """Continue from the run's newest good checkpoint, if any (validated before any history file
        is touched)."""
        resume_run(
            self.run_dir, CHECKPOINT_SCHEMA, self.config.epochs, self.device, self.log,
            main=self.dist.is_main, epoch_base=self.epoch_base, bind=self._check_bound,
            restore=self._restore, histories=[self.run_dir / "metrics.jsonl"],
        )  # fmt: skip

    def _restore(self, loaded: LoadedCheckpoint) -> None:
        """Put a checked checkpoint into the run (after checking its counters)."""
        epoch = loaded.state["epoch"] - self.epoch_base + 1  # the last finished epoch, from 1
        check_counters(
            loaded.state, loaded.path, epoch=epoch, schedules={"scheduler": epoch}, scalers=("scaler",)
        )  # one scheduler step per epoch
        self.load_state_dict(loaded.state, loaded.path)

    def _check_bound(self, loaded: LoadedCheckpoint) -> None:
        """The checkpoint must be this run's: the same run id and settings as ``config.json``
        (:func:`~fastnas.train.checkpoint.check_run_binding`) and the architecture of ``genotype.json``."""
        config_path = self.run_dir / "config.json"
        check_bound_to(loaded.state, loaded.path, self.config, self.genotype, config_path, self.log)

    # ----------------------------------------------------------------- steps
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; returns the (detached) loss and the number of correct top-1 predictions."""
        cfg = self.config
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            logits, logits_aux = self.net(x)
            loss = training_loss(logits, logits_aux, y, cfg.auxiliary_weight, cfg.label_smoothing)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.config
        assert self.train_loader is not None
        self.model.train()
        drop_prob = cfg.drop_path * epoch / cfg.epochs
        self.model.drop_path_prob = drop_prob
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # drop-path masks (and in-process transforms)
        lr = self.optimizer.param_groups[0]["lr"]
        self.train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        steps = len(self.train_loader)
        self.monitor.reset()
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader):
            loss, n_correct = self.train_step(x, y)
            self.monitor.observe("training", step, loss)
            loss_sum += loss.double() * len(y)
            correct += n_correct
            seen += len(y)
            bar.update(1)
            if self.progress and (step % 50 == 0 or step == steps - 1):  # syncs: only with the bar
                self.monitor.check(epoch)
                loss_now, acc_now = float(loss_sum) / seen, 100.0 * float(correct) / seen
                bar.set_postfix(loss=f"{loss_now:.3f}", acc=f"{acc_now:.1f}")
        bar.close()
        self.monitor.check(epoch)
        total_loss, total_correct, total_seen = self.dist.sum([loss_sum, correct, seen], self.device)
        train_loss, train_acc = total_loss / max(total_seen, 1), 100.0 * total_correct / max(total_seen, 1)
        elapsed = time.perf_counter() - started  # after the sum's sync above
        self.scheduler.step()
        return {
            "train_loss": train_loss,
            "train_top1": train_acc,
            "lr": lr,
            "drop_path_prob": drop_prob,
            "images_per_s": total_seen / elapsed if elapsed > 0 else 0.0,  # all processes
            "train_time_s": elapsed,
        }

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """The test metrics after ``epoch`` (0-based); a test loss that is not finite raises
        :class:`~fastnas.errors.NonFiniteError` naming the epoch and the test step."""
        self.test_monitor.reset()
        result = evaluate_model(
            self.model,
            self.test_loader,
            self.device,
            self.precision,
            self.channels_last,
            self.progress,
            sum_over=self.dist.sum,
            monitor=self.test_monitor,
        )
        self.test_monitor.check(epoch)
        if not math.isfinite(result["test_loss"]):
            raise NonFiniteError(
                f"the test loss after epoch {epoch + 1} is {result['test_loss']} (the network diverged); "
                "no result is written - lower the learning rate or use --precision fp32, then resume with "
                "--resume"
            )
        return result

    # ----------------------------------------------------------------- run
    def _check_finite_state(self, epoch: int) -> None:
        """The state the checkpoint of ``epoch`` (0-based) would hold must be finite on every process: a
        :class:`~fastnas.errors.NonFiniteError` naming the first tensor that is not (BatchNorm running
        statistics overflow while the losses are still finite), before anything of the epoch is written."""
        bad = find_non_finite(self.state_dict(epoch))
        if self.dist.sum([bad is not None], self.device)[0]:
            raise non_finite_state_error(bad, epoch + 1)

    def _should_evaluate(self, epoch: int) -> bool:
        every = self.config.eval_every
        return epoch == self.config.epochs - 1 or (every > 0 and (epoch + 1) % every == 0)

    def run(self) -> TrainResult:
        cfg = self.config
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.start_epoch >= cfg.epochs:
            self.log(f"run {self.run_dir} already trained ({cfg.epochs} epochs); evaluating its checkpoint")
        final: dict[str, Any] | None = None
        board = (
            TensorBoardLog(self.run_dir, self.start_epoch) if cfg.tensorboard and self.dist.is_main else None
        )
        for epoch in range(self.start_epoch, cfg.epochs):
            started = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + self.epoch_base, **self.train_epoch(epoch)}
            if self._should_evaluate(epoch):
                final = self.evaluate(epoch)
                row.update(final)
            row["epoch_time_s"] = time.perf_counter() - started
            self._check_finite_state(epoch)  # nothing of the epoch is written otherwise
            # history first: a kill before the checkpoint redoes this epoch and trims its row on resume
            if self.dist.is_main:  # rank 0 alone writes the run directory
                append_jsonl(metrics_path, row)
                save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict(epoch))
            if board is not None:
                board.epoch(epoch, row)
            test = ""
            if "test_top1" in row:
                test = (
                    f" | test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.2f}% "
                    f"top-5 {row['test_top5']:.2f}%"
                )
            self.log(
                f"epoch {epoch + 1}/{cfg.epochs} | train loss {row['train_loss']:.4f} "
                f"top-1 {row['train_top1']:.2f}%{test} | lr {row['lr']:.5f} | drop path "
                f"{row['drop_path_prob']:.3f} | {row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s"
            )
        if board is not None:
            board.close()
        if final is None:
            final = self.evaluate(cfg.epochs - 1)
        self.dist.barrier()  # rank 0 has written every epoch's row
        metrics = read_jsonl(metrics_path)
        result = self._result(final, metrics)
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "result.json", result)
        self.log(
            f"test top-1 {result['test_top1']:.2f}% top-5 {result['test_top5']:.2f}% "
            f"({result['num_test_images']} images) | {result['parameters'] / 1e6:.3f} M parameters "
            f"(+{(result['parameters_with_aux'] - result['parameters']) / 1e6:.3f} M auxiliary head) | "
            f"{result['flops_per_image'] / 2e6:.1f} M multiply-adds"
        )
        self.dist.barrier()
        return TrainResult(self.run_dir, metrics, result, self.model)

    def _result(self, final: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        size = DATASET_SHAPES[cfg.dataset][2]
        flop_model = build_model(cfg, self.genotype, self.num_classes, self.in_channels)
        flops = count_flops(flop_model, torch.randn(1, self.in_channels, size, size))
        return {
            **final,
            "genotype": self.genotype.to_literal(),
            "dataset": cfg.dataset,
            "epochs": cfg.epochs,
            "C": cfg.C,
            "layers": cfg.layers,
            "num_classes": self.num_classes,
            "parameters": self.parameters,
            "parameters_with_aux": self.parameters_with_aux,
            "flops_per_image": flops,
            "image_size": size,
            "train_time_s": sum(r.get("train_time_s", 0.0) for r in metrics),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.dist.world_size,
        }


def _toggle_on(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


# ---------------------------------------------------------------------------------------------- entry


def run_train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Retrain ``config.genotype`` from scratch; returns the run directory, metrics and test result. An
    existing, non-empty run directory is refused unless ``overwrite``."""
    with distributed_session(config.device, config.dist_backend) as dist:
        resolved = config.resolved()
        run_name, run_id = dist.broadcast((resolved.run_name, new_run_id()))
        resolved = resolved.replace(run_name=run_name, run_id=run_id)
        genotype = resolved.load_genotype()
        run_dir = resolved.run_dir
        check_run_dir_free(run_dir, overwrite, "train")
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        # data and device errors come first
        runner = TrainRunner(resolved, genotype, run_dir, progress=progress, dist=dist)
        if dist.is_main:
            prepare_run_dir(run_dir, overwrite)
            # the genotype first, the config last: a directory with a config.json always has its genotype
            genotype.save_json(run_dir / "genotype.json")
            atomic_write_text(run_dir / "genotype.txt", genotype.to_literal() + "\n")
            atomic_write_json(run_dir / "config.json", resolved.to_json())
        where = f" x {dist.world_size} processes" if dist.enabled else ""
        runner.log(
            f"fastnas train: {genotype_label(resolved.genotype)} on {resolved.dataset}, C={resolved.C}, "
            f"{resolved.layers} layers, {runner.parameters / 1e6:.3f} M parameters, {runner.device} "
            f"{runner.precision}{where}, run directory {run_dir}"
        )
        return runner.run()


def resume_train(run_dir: str | Path, progress: bool = True, device: str | None = None) -> TrainResult:
    """Continue the retraining run in ``run_dir`` after its last good checkpoint (evaluate it when done)."""
    run_dir = Path(run_dir)
    config = ResolvedTrainConfig.read_run(
        run_dir,
        foreign_key="method",
        foreign=(
            f"a search run directory, not a retraining one; continue it with `fastnas search --resume "
            f"{run_dir}`, or retrain its genotype with `fastnas train --genotype {run_dir}`"
        ),
    )
    genotype = load_genotype(run_dir)  # the genotype.json saved at the start, not the original source
    with distributed_session(device or config.device, config.dist_backend) as dist:
        runner = TrainRunner(config, genotype, run_dir, progress=progress, device=device, dist=dist)
        runner.resume()
        return runner.run()


def _genotype_differences(given: Genotype, trained: Genotype) -> list[str]:
    """Where ``given`` (``genotype.json``) differs from ``trained`` (the checkpoint's), edge by edge."""
    out = []
    theirs = dict(trained.cells)
    for name, cell in given.cells:
        other = theirs.pop(name, None)
        if other is None:
            out.append(f"genotype.json has a {name} cell that the checkpoint's genotype lacks")
            continue
        if cell.inputs_per_node != other.inputs_per_node:
            out.append(
                f"the {name} cell has nodes of {list(cell.inputs_per_node)} inputs in genotype.json, "
                f"{list(other.inputs_per_node)} in the checkpoint"
            )
            continue
        for node, (mine, trained_node) in enumerate(zip(cell.nodes, other.nodes, strict=True)):
            for edge, (a, b) in enumerate(zip(mine, trained_node, strict=True)):
                if a != b:
                    out.append(
                        f"{name} cell, node {node + 2}, edge {edge + 1}: {a[0]} from node {a[1]} in "
                        f"genotype.json, {b[0]} from node {b[1]} in the checkpoint"
                    )
        if cell.concat != other.concat:
            out.append(
                f"the {name} cell concatenates nodes {list(cell.concat)} in genotype.json, "
                f"{list(other.concat)} in the checkpoint"
            )
    out.extend(f"the checkpoint's genotype has a {name} cell that genotype.json lacks" for name in theirs)
    if not out and given != trained:
        out.append("allow_dangling differs")
    return out


def check_bound_to(
    state: dict[str, Any],
    path: Path,
    config: ResolvedTrainConfig,
    genotype: Genotype | None,
    config_path: Path,
    log: Callable[[str], None],
    advice: str = "start the run again",
) -> None:
    """The retraining checkpoint ``state`` (read from ``path``) must belong to the run whose
    ``config.json`` (``config_path``) gives ``config``: the same run id and settings
    (:func:`~fastnas.train.checkpoint.check_run_binding`), and, unless ``genotype`` is None, the
    architecture of the run's ``genotype.json``. A :class:`~fastnas.errors.CheckpointError` names what
    differs."""
    recorded = state["config"]
    try:  # normalised as config.json is (keys added since filled in)
        settings = ResolvedTrainConfig.from_json(recorded, f"checkpoint {path}").to_json()
    except ConfigError:  # compared as written
        settings = recorded
    recorded_id = recorded.get("run_id")
    check_run_binding(
        path, settings, config.to_json(), config_path, log,
        recorded_run_id=recorded_id if isinstance(recorded_id, str) else None, advice=advice,
    )  # fmt: skip
    if genotype is None:
        return
    try:
        trained = Genotype.from_json(state["genotype"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its genotype is malformed ({exc}); {advice}") from None
    differences = _genotype_differences(genotype, trained)
    if differences:
        more = f" (and {len(differences) - 1} more difference(s))" if len(differences) > 1 else ""
        genotype_path = config_path.parent / "genotype.json"
        raise CheckpointError(
            f"{genotype_path} is not the architecture that {path.name} was trained with: "
            f"{differences[0]}{more}; genotype.json was edited or replaced after the run started - put it "
            "back, or start a new run to train that genotype"
        )


def _check_run_directory_of(state: dict[str, Any], path: Path) -> None:
    """--eval-only of a checkpoint inside a run directory: it must be that run's (its ``config.json``
    and ``genotype.json``; a checkpoint on its own carries everything it needs)."""
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        return
    data = read_run_config(config_path, f"{config_path} does not exist")
    if isinstance(data, dict) and "method" in data and "auxiliary_weight" not in data:
        raise CheckpointError(
            f"checkpoint {path} is a retraining checkpoint, but {config_path} is a search run's: it was "
            "moved into another run's directory - evaluate it in its own run directory"
        )
    current = ResolvedTrainConfig.from_json(data, str(config_path))
    genotype_path = path.parent / "genotype.json"
    genotype = load_genotype(genotype_path) if genotype_path.is_file() else None
    check_bound_to(
        state, path, current, genotype, config_path, print, advice="evaluate a checkpoint of this run"
    )


def evaluate_checkpoint(
    source: str | Path,
    device: str | None = None,
    data_dir: str | None = None,
    batch_size: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluation-only mode: test loss, top-1 and top-5 of a checkpoint (a ``checkpoint.pt`` or a run
    directory holding one). The data location, batch size and test subset default to the run's own;
    with ``write``, the numbers also go to ``eval.json`` next to the checkpoint."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    loaded = load_checkpoint(path, fallback=False)
    state = loaded.state
    if "arch_optimizer" in state and "optimizer" not in state:
        raise CheckpointError(
            f"checkpoint {path} is a search checkpoint; --eval-only evaluates retraining checkpoints - "
            f"retrain the search's genotype with `fastnas train --genotype {path.parent}` first"
        )
    check_state(state, CHECKPOINT_SCHEMA, path)
    config = ResolvedTrainConfig.from_json(state["config"], f"{path} (its config)")
    _check_run_directory_of(state, path)
    check_epoch(state["epoch"], config.epochs, path, epoch_base=config.epoch_base)
    epoch = int(state["epoch"]) - config.epoch_base + 1  # the last finished epoch, from 1
    unusable = "it cannot be evaluated - evaluate another checkpoint of the run, or retrain"
    check_finite(state, path, advice=unusable)
    check_counters(
        state, path, epoch=epoch, schedules={"scheduler": epoch}, scalers=("scaler",), advice=unusable
    )
    changes: dict[str, Any] = {}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if test_limit is not None:
        changes["test_limit"] = test_limit
    config = config.replace(**changes)
    try:
        genotype = Genotype.from_json(state["genotype"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its genotype is malformed ({exc})") from None
    dev = resolve_device(device or config.device)
    precision = resolve_precision(config.precision, dev)
    channels_last = _toggle_on(config.channels_last, dev.type == "cuda")
    _, test_loader, num_classes, in_channels = build_loaders(config, dev, train=False)
    if num_classes != state["num_classes"]:
        raise DataError(
            f"the test set has {num_classes} classes but the checkpoint was trained on {state['num_classes']}"
        )
    model = build_model(config, genotype, num_classes, in_channels)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit its network ({str(exc)[:300]})") from None
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    monitor = NonFiniteMonitor(dev, ("test",))
    metrics = evaluate_model(model, test_loader, dev, precision, channels_last, progress, monitor=monitor)
    first = int(monitor.first_bad["test"])
    if first >= 0 or not math.isfinite(metrics["test_loss"]):
        value = float(monitor.value["test"]) if first >= 0 else metrics["test_loss"]
        at = f" at test step {first + 1}" if first >= 0 else ""
        kind = "NaN" if math.isnan(value) else "infinite"
        raise NonFiniteError(
            f"the test loss of checkpoint {path} (after epoch {epoch}) is {kind}{at}: its network gives "
            "non-finite outputs, so nothing is written - evaluate another checkpoint of the run, or retrain "
            "with a lower learning rate or --precision fp32"
        )
    result = {
        **metrics,
        "checkpoint": str(path),
        "epoch": epoch,
        "device": str(dev),
        "precision": precision,
    }
    if write:
        atomic_write_json(path.parent / "eval.json", result)
    return result
