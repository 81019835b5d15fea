"""Configuration of a search run. ``None`` means "the method's published default"."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastnas.algorithms import get_method
from fastnas.spaces import SPACE_DEFAULTS


@dataclass
class SearchConfig:
    """Everything that defines a search run; written to ``config.json`` in the run directory."""

    method: str = "darts"
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"order": 2}
    space: str = "darts"
    nodes: int = 4  # intermediate nodes per cell (DARTS space)
    nb201_table: str | None = None  # NAS-Bench-201 results table: log each epoch's cell accuracy
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    limit: int | None = None  # use only the first N training images (quick runs)
    epochs: int | None = None
    batch_size: int | None = None
    C: int | None = None
    layers: int | None = None
    lr: float | None = None
    lr_min: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    arch_lr: float | None = None
    arch_betas: tuple[float, float] | None = None
    arch_weight_decay: float | None = None
    arch_grad_clip: float | None = None
    train_portion: float | None = None
    seed: int = 2
    device: str = "auto"
    precision: str = "fp32"
    executor: str = "reference"
    deterministic: bool = True  # CPU: torch.use_deterministic_algorithms (process-wide); CUDA: no autotune
    out_dir: str = "runs"
    run_name: str | None = None

    def resolved(self) -> SearchConfig:
        """A copy with every ``None`` hyper-parameter replaced by the method's published default."""
        defaults = get_method(self.method).defaults
        values = dataclasses.asdict(self)
        if self.space not in SPACE_DEFAULTS:
            raise ValueError(f"unknown search space {self.space!r}; available: {', '.join(SPACE_DEFAULTS)}")
        for key, value in SPACE_DEFAULTS[self.space].items():
            if values.get(key) is None:
                values[key] = value
        for f in dataclasses.fields(defaults):
            if values.get(f.name) is None:
                values[f.name] = getattr(defaults, f.name)
        if values["arch_betas"] is not None:
            values["arch_betas"] = tuple(values["arch_betas"])
        out = SearchConfig(**values)
        out.validate()
        return out

    def validate(self) -> None:
        get_method(self.method)
        if self.nb201_table is not None and self.space != "nb201":
            raise ValueError("--nb201-table needs --space nb201")
        if self.space == "nb201" and self.nodes != 4:
            raise ValueError(
                "the NAS-Bench-201 cell has a fixed topology; --nodes applies to the darts space only"
            )
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.train_portion is not None and not 0 < self.train_portion < 1:
            raise ValueError(f"train portion must be in (0, 1), got {self.train_portion}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(
                f"limit must be >= 2 images (half train the weights, half the architecture), got {self.limit}"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown search config keys {sorted(unknown)}")
        if data.get("arch_betas") is not None:
            data = {**data, "arch_betas": tuple(data["arch_betas"])}
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        return cls.from_json(json.loads(Path(path).read_text()))
