"""Configuration of a retraining run and the published recipes (REFERENCE.md section 3).

``None`` in a :class:`TrainConfig` means "the published recipe of the dataset": :meth:`TrainConfig.resolved`
fills it in from :data:`RECIPES` (``cifar10`` / ``cifar100``: DARTS CIFAR; ``imagenet``: DARTS ImageNet;
``digits``: the CIFAR recipe with a 4-pixel cutout for its 8x8 images).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastnas.train.device import PRECISIONS

TRAIN_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet", "digits")
SCHEDULES: tuple[str, ...] = ("cosine", "step")
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class Recipe:
    """Published retraining hyper-parameters of one dataset family."""

    network: str  # "cifar" or "imagenet"
    epochs: int
    batch_size: int
    C: int
    layers: int
    auxiliary_weight: float
    cutout: int
    drop_path: float
    label_smoothing: float
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float
    schedule: str
    lr_gamma: float


_CIFAR = Recipe(
    network="cifar",
    epochs=600,
    batch_size=96,
    C=36,
    layers=20,
    auxiliary_weight=0.4,
    cutout=16,
    drop_path=0.2,
    label_smoothing=0.0,
    lr=0.025,
    lr_min=0.0,
    momentum=0.9,
    weight_decay=3e-4,
    grad_clip=5.0,
    schedule="cosine",
    lr_gamma=0.97,
)
_IMAGENET = Recipe(
    network="imagenet",
    epochs=250,
    batch_size=128,
    C=48,
    layers=14,
    auxiliary_weight=0.4,
    cutout=0,
    drop_path=0.0,
    label_smoothing=0.1,
    lr=0.1,
    lr_min=0.0,
    momentum=0.9,
    weight_decay=3e-5,
    grad_clip=5.0,
    schedule="step",
    lr_gamma=0.97,
)
RECIPES: dict[str, Recipe] = {
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "imagenet": _IMAGENET,
    "digits": dataclasses.replace(_CIFAR, cutout=4),
}
"""Dataset -> published recipe: CIFAR 600 epochs, batch 96, SGD 0.025 cosine to 0, wd 3e-4, clip 5, aux 0.4,
cutout 16, drop path 0.2; ImageNet 250 epochs, batch 128, SGD 0.1 decayed by 0.97 per epoch, wd 3e-5, label
smoothing 0.1, aux 0.4, clip 5, no cutout or drop path."""

DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "imagenet": (1000, 3, 224),
    "digits": (10, 1, 8),
}
"""Dataset -> (classes, input channels, image size) of its standard form (ImageNet: 224x224 crops)."""

_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "network")


def normalise_dataset(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TRAIN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(TRAIN_DATASETS)}")
    return key


@dataclass
class TrainConfig:
    """Everything that defines a retraining run; written to ``config.json`` in the run directory."""

    genotype: Any = "DARTS_V2"  # zoo name, literal, JSON file, run directory (or a Genotype)
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    limit: int | None = None  # first N training images (quick runs)
    test_limit: int | None = None  # first N test images; None = same as limit
    epochs: int | None = None
    batch_size: int | None = None
    C: int | None = None
    layers: int | None = None
    auxiliary: bool = True
    auxiliary_weight: float | None = None
    cutout: int | None = None
    drop_path: float | None = None
    label_smoothing: float | None = None
    lr: float | None = None
    lr_min: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    schedule: str | None = None  # "cosine" (to lr_min) or "step" (x lr_gamma per epoch)
    lr_gamma: float | None = None
    eval_every: int = 1  # test-set evaluation every N epochs (0 = only at the end)
    workers: int = 4  # DataLoader workers (ImageNet only)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None = on for CUDA
    deterministic: bool | None = None  # None = deterministic kernels on CPU, cuDNN autotuner on CUDA
    out_dir: str = "runs"
    run_name: str | None = None

    @property
    def recipe(self) -> Recipe:
        return RECIPES[normalise_dataset(self.dataset)]

    @property
    def network(self) -> str:
        """``cifar`` or ``imagenet``: which evaluation network the dataset uses."""
        return self.recipe.network

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` hyper-parameter replaced by the dataset's published recipe."""
        values = self._values()
        values["dataset"] = normalise_dataset(self.dataset)
        recipe = RECIPES[values["dataset"]]
        for name in _RECIPE_FIELDS:
            if values.get(name) is None:
                values[name] = getattr(recipe, name)
        if values["test_limit"] is None:
            values["test_limit"] = values["limit"]
        out = TrainConfig(**values)
        out.validate()
        return out

    def validate(self) -> None:
        normalise_dataset(self.dataset)
        positive = {"epochs": self.epochs, "batch size": self.batch_size, "C": self.C, "layers": self.layers}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.layers is not None and self.layers < 3:
            raise ValueError(f"layers must be >= 3 (two cells are reductions), got {self.layers}")
        if self.drop_path is not None and not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {self.drop_path}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.cutout is not None and self.cutout < 0:
            raise ValueError(f"cutout must be >= 0 (0 = off), got {self.cutout}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"unknown precision {self.precision!r}; use {', '.join(PRECISION_CHOICES)}")
        for name, value in (("limit", self.limit), ("test limit", self.test_limit)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 image, got {value}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")

    def _values(self) -> dict[str, Any]:
        """Shallow field dict (``dataclasses.asdict`` would turn a Genotype into nested dicts)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; a :class:`~fastnas.genotype.Genotype` is stored as its literal."""
        values = self._values()
        if not isinstance(values["genotype"], str):
            from fastnas.genotype import load_genotype

            values["genotype"] = load_genotype(values["genotype"]).to_literal()
        return values

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown train config keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_json(json.loads(Path(path).read_text()))
