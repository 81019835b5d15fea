"""``--tensorboard``: a run's per-epoch scalars and architecture weights as TensorBoard event files in
``RUN_DIR/tensorboard`` (``torch.utils.tensorboard``; the ``tensorboard`` package is in the ``[viz]``
extra). A resumed run purges the events of the epochs it redoes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fastnas.errors import ConfigError

__all__ = ["TensorBoardLog"]

#: metrics-row keys written as scalars (those a row has), under these tags
SCALARS: dict[str, str] = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "train_top1": "accuracy/train",
    "val_acc": "accuracy/validation",
    "test_top1": "accuracy/test_top1",
    "test_top5": "accuracy/test_top5",
    "lr": "lr",
    "skip_connect_count": "architecture/skip_connect_count",
    "arch_cosine_distance": "architecture/cosine_distance",
    "images_per_s": "speed/images_per_s",
    "data_wait_s": "speed/data_wait_s",
    "drop_path_prob": "drop_path_prob",
}


class TensorBoardLog:
    """One ``SummaryWriter`` for a run; ``epoch`` is the loop's 0-based index, logged as step ``epoch + 1``:
    the number the log and the run's files give that epoch."""

    def __init__(self, run_dir: Path, start_epoch: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                '--tensorboard needs the tensorboard package: pip install "fastnas[viz]" (or tensorboard)'
            ) from None
        # events of epochs >= start_epoch (a crashed run's last ones) are dropped when resuming
        self.writer = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None
        )

    def epoch(
        self, epoch: int, row: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        step = epoch + 1
        for key, tag in SCALARS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)
        for cell_type, value in (row.get("alpha_entropy") or {}).items():
            self.writer.add_scalar(f"architecture/entropy_{cell_type}", value, step)
        table = row.get("table") or {}
        if table.get("c10_test") is not None:
            self.writer.add_scalar("nb201/c10_test", table["c10_test"], step)
        for cell_type, w in (weights or {}).items():
            self.writer.add_histogram(f"edge_weights/{cell_type}", w.detach().float().cpu(), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
