"""The body of each process of the multi-process tests (``torch.multiprocessing.spawn`` imports it
by name): joins a gloo group through the same environment variables torchrun sets, runs or resumes a
search, and saves what this rank ended with to ``out/rank<R>.pt``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Task:
    """What every rank does: ``search`` (a fresh run of ``config``), ``resume`` (of ``run_dir``) or
    ``train`` (a retraining ``config``);
    ``interrupt_at`` stops the run as a Ctrl-C would when that epoch (0-based) starts."""

    kind: str
    out: str
    config: Any = None
    run_dir: str | None = None
    interrupt_at: int | None = None
    frozen_bn: bool = False  # BatchNorm normalises with its running statistics: no batch dependence


def _freeze_batch_norm() -> None:
    """Every BatchNorm layer normalises with its (initial) running statistics, even in training: the
    loss of a batch is then the mean of per-example losses, so b examples on each of 2 ranks and 2b on
    one rank have the same gradients (with batch statistics they differ by the BN terms)."""
    import torch.nn.functional as F
    from torch.nn.modules.batchnorm import _BatchNorm

    def forward(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    _BatchNorm.forward = forward  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(world_size: int, task: Task) -> list[dict[str, Any]]:
    """Run ``task`` on ``world_size`` processes; the per-rank results, rank order."""
    port = free_port()
    torch.multiprocessing.spawn(_rank_main, args=(world_size, port, task), nprocs=world_size, join=True)
    return [torch.load(Path(task.out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_main(rank: int, world_size: int, port: int, task: Task) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    from fastnas.train.search import SearchRunner, resume_search, run_search

    if task.frozen_bn:
        _freeze_batch_norm()
    if task.interrupt_at is not None:
        train_epoch, stop = SearchRunner.train_epoch, task.interrupt_at

        def interrupted(self: SearchRunner, epoch: int) -> Any:
            if epoch == stop:
                raise KeyboardInterrupt
            return train_epoch(self, epoch)

        SearchRunner.train_epoch = interrupted  # type: ignore[method-assign]
    if task.kind == "train":
        from fastnas.train.retrain import run_train

        trained = run_train(task.config, progress=False)
        weights = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}
        torch.save({"weights": weights, "result": trained.result}, Path(task.out) / f"rank{rank}.pt")
        return
    try:
        if task.kind == "search":
            result = run_search(task.config, progress=False)
        else:
            result = resume_search(task.run_dir, progress=False)
    except KeyboardInterrupt:
        torch.save({"interrupted": True}, Path(task.out) / f"rank{rank}.pt")
        return
    model = result.model
    torch.save(
        {
            "alphas": [p.detach().clone() for p in model.arch_parameters()],
            "weights": {k: v.detach().clone() for k, v in model.supernet.state_dict().items()},
            "genotype": result.genotype.to_literal(),
            "metrics": result.metrics,
        },
        Path(task.out) / f"rank{rank}.pt",
    )
