"""Configuration of a retraining run and the published recipes (those of Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019).

:class:`TrainConfig` is what a user asks for: ``None`` in a hyper-parameter means "the published recipe
of the dataset". :meth:`TrainConfig.resolved` fills it in from :data:`RECIPES` (``cifar10`` /
``cifar100``: DARTS CIFAR; ``imagenet``: DARTS ImageNet; ``digits``: the CIFAR recipe with a 4-pixel
cutout for its 8x8 images) and returns a :class:`ResolvedTrainConfig`, in which every value is known;
that is what a run uses and what ``config.json`` records.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from fastnas.errors import ConfigError
from fastnas.fields import field_types, setting
from fastnas.genotype import Genotype, load_genotype
from fastnas.genotype_zoo import resolve_zoo_name
from fastnas.nn.sizing import check_supernet_size, estimate_supernet
from fastnas.train.device import PRECISIONS
from fastnas.train.distributed import env_world_size
from fastnas.train.run_config import RunConfig, device_setting, out_dir_setting, tensorboard_setting
from fastnas.train.scaling import (
    dist_backend_setting,
    global_batch_setting,
    loader_setting,
    lr_scaling_setting,
    per_rank_batch,
    scaled_lr,
    with_added_keys,
)

TRAIN_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet", "digits")
SCHEDULES: tuple[str, ...] = ("cosine", "step")
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)

Toggle = Literal["auto", "on", "off"]
"""A switch whose ``auto`` setting depends on the device (on for CUDA, off for CPU, or as documented)."""


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
_IMAGENET = dataclasses.replace(  # the same auxiliary weight, lr_min, momentum, clip and gamma
    _CIFAR,
    network="imagenet",
    epochs=250,
    batch_size=128,
    C=48,
    layers=14,
    cutout=0,
    drop_path=0.0,
    label_smoothing=0.1,
    lr=0.1,
    weight_decay=3e-5,
    schedule="step",
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


def check_cutout(cutout: int, dataset: str) -> None:
    """Refuse a ``cutout`` that blanks every training image, and one the dataset's loader ignores.

    The retraining loader (:func:`fastnas.data.loader.cutout_mask`, DARTS ``Cutout``) zeroes rows
    ``clip(y - cutout // 2, 0, H) .. clip(y + cutout // 2, 0, H)`` (end exclusive) around a centre row ``y``
    drawn from ``0 .. H-1``, and likewise for columns. The square covers every row for every centre exactly
    when ``cutout // 2 >= H`` (the centre ``y = 0`` needs ``cutout // 2 >= H``, the centre ``y = H-1`` only
    ``>= H-1``), i.e. when ``cutout >= 2H``: then every image is blank, whatever its centre. A smaller
    cutout, even one larger than the image (``H <= cutout < 2H``), leaves a strip of the image wherever the
    centre falls near a border, so it is allowed. The ImageNet loaders apply no cutout at all.
    """
    if cutout <= 0:
        return
    if RECIPES[dataset].network == "imagenet":
        raise ConfigError(
            f"--cutout {cutout} has no effect on {dataset}: its loaders apply no cutout (the DARTS ImageNet "
            "recipe has none); use --cutout 0"
        )
    size = DATASET_SHAPES[dataset][2]
    if cutout // 2 >= size:
        raise ConfigError(
            f"--cutout {cutout} blanks every {size}x{size} {dataset} image wherever its square is centred "
            f"(a square of side >= {2 * size} covers the whole image from any centre); give --cutout below "
            f"{2 * size} (the recipe's is {RECIPES[dataset].cutout})"
        )


_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "network")


def normalise_dataset(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TRAIN_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names are: {', '.join(TRAIN_DATASETS)}")
    return key


def _toggle(value: bool | str | None, name: str) -> Toggle:
    if value is None or value == "auto":
        return "auto"
    if value is True or value == "on":
        return "on"
    if value is False or value == "off":
        return "off"
    raise ConfigError(f"{name} must be true, false or None (auto), got {value!r}")


def _timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def genotype_label(source: Any) -> str:
    """A short name of a genotype source for run names: the zoo name, the file stem, or ``genotype``."""
    if isinstance(source, str):
        name = resolve_zoo_name(source)
        if name is not None:
            return name
        if "Genotype(" not in source:
            return Path(source).name.split(".")[0] or "genotype"
    return "genotype"


@dataclass
class TrainConfig:
    """Everything that defines a retraining run, as asked for (``None`` = the dataset's recipe). Each
    field's ``setting`` is also its command-line flag (``fastnas train --help``)."""

    genotype: Any = setting(
        "DARTS_V2",
        "zoo name (see `fastnas info --list-genotypes`), a Genotype(...) literal, a genotype JSON or "
        "text file, or a search run directory (its genotype.json)",
    )
    dataset: str = setting("cifar10", "dataset (its recipe gives the defaults)", choices=TRAIN_DATASETS)
    data_dir: str | None = setting(
        None,
        "CIFAR: python batches, image-folder tree or .tar(.gz); ImageNet: a folder with train/ and val/ "
        "ImageFolder trees or a .tar of one",
        metavar="PATH",
    )
    download: bool = setting(False, "let torchvision download CIFAR", const=True)
    limit: int | None = setting(
        None,
        "use only N training images (quick runs; CIFAR: the first N, ImageNet: a fixed random subset)",
        metavar="N",
    )
    test_limit: int | None = setting(None, "use only the first N test images (default: --limit)", metavar="N")
    epochs: int | None = setting(None, "training epochs")
    batch_size: int | None = setting(
        None, "batch size per process (the effective batch is this x the world size)"
    )
    global_batch_size: int | None = global_batch_setting()
    lr_scaling: str = lr_scaling_setting()
    dist_backend: str = dist_backend_setting()
    sync_bn: bool = setting(
        False, "torchrun on GPUs: SyncBatchNorm (batch statistics over all processes)", const=True
    )
    loader: str = loader_setting()
    C: int | None = setting(None, "initial channels", flag="--C", aliases=("--init-channels",))
    layers: int | None = setting(None, "number of cells")
    auxiliary: bool = setting(True, "no auxiliary head", flag="--no-auxiliary", const=False)
    auxiliary_weight: float | None = setting(None, "weight of the auxiliary loss")
    cutout: int | None = setting(
        None,
        "cutout square side in pixels (0 = off; CIFAR and digits only; below twice the image side, as a "
        "larger square blanks every image)",
    )
    drop_path: float | None = setting(None, "final drop-path probability (grows linearly over the epochs)")
    label_smoothing: float | None = setting(None, "label smoothing of the cross-entropy")
    lr: float | None = setting(None, "initial learning rate")
    lr_min: float | None = setting(None, "final learning rate of the cosine schedule")
    momentum: float | None = setting(None, "SGD momentum")
    weight_decay: float | None = setting(None, "weight decay")
    grad_clip: float | None = setting(None, "gradient-norm clip (0 = off)")
    schedule: str | None = setting(None, "cosine (CIFAR) or step (ImageNet)", choices=SCHEDULES)
    lr_gamma: float | None = setting(None, "per-epoch decay of the step schedule")
    eval_every: int = setting(1, "test every N epochs (0 = only at the end)", metavar="N")
    workers: int = setting(4, "data-loading processes (ImageNet)")
    seed: int = setting(0, "random seed")
    device: str = device_setting()
    precision: str = setting("auto", "auto = bf16 on CUDA, fp32 on CPU", choices=PRECISION_CHOICES)
    channels_last: bool | None = setting(
        None, "keep NCHW memory on CUDA", flag="--no-channels-last", const=False
    )
    deterministic: bool | None = setting(
        None,
        "allow non-deterministic kernels on CPU too (CUDA runs use the cuDNN autotuner anyway)",
        flag="--nondeterministic",
        const=False,
    )
    tensorboard: bool = tensorboard_setting()
    out_dir: str = out_dir_setting()
    run_name: str | None = setting(
        None, "run directory name (default: train-<genotype>-<dataset>-s<seed>-<time>)"
    )

    @property
    def recipe(self) -> Recipe:
        return RECIPES[normalise_dataset(self.dataset)]

    def resolved(self) -> ResolvedTrainConfig:
        """The run's configuration: the recipe filled in, the genotype checked, values validated."""
        dataset = normalise_dataset(self.dataset)
        recipe = RECIPES[dataset]
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        world_size = env_world_size()
        values["batch_size"] = per_rank_batch(self.batch_size, self.global_batch_size, world_size)
        for name in _RECIPE_FIELDS:
            if values[name] is None:
                values[name] = getattr(recipe, name)
        for name in ("lr", "lr_min"):  # the recipe's (or the given) single-process rates
            values[name] = scaled_lr(values[name], world_size, self.lr_scaling)
        del values["global_batch_size"]
        genotype = self.genotype
        if not isinstance(genotype, str):
            genotype = load_genotype(genotype).to_literal()
        else:
            load_genotype(genotype)  # a bad genotype fails here, before anything is written
        values.update(
            genotype=genotype,
            dataset=dataset,
            test_limit=self.limit if self.test_limit is None else self.test_limit,
            channels_last=_toggle(self.channels_last, "channels_last"),
            deterministic=_toggle(self.deterministic, "deterministic"),
            run_name=self.run_name
            or f"train-{genotype_label(self.genotype)}-{dataset}-s{self.seed}-{_timestamp()}",
        )
        resolved = ResolvedTrainConfig(**values, world_size=world_size)
        resolved.validate()
        return resolved


@dataclass(frozen=True)
class ResolvedTrainConfig(RunConfig):
    """A retraining run's configuration with every value known (written to ``config.json``)."""

    run_kind: ClassVar[str] = "a retraining run directory"
    own_key: ClassVar[str] = "auxiliary_weight"

    genotype: str  # the source as given (zoo name, file, run directory) or a literal
    dataset: str
    data_dir: str | None  # None: the dataset needs no folder (digits) or the default location
    download: bool
    limit: int | None  # None: every training image
    test_limit: int | None  # None: every test image
    epochs: int
    batch_size: int  # per process
    sync_bn: bool
    C: int
    layers: int
    auxiliary: bool
    auxiliary_weight: float
    cutout: int
    drop_path: float
    label_smoothing: float
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float  # 0 = no clipping
    schedule: str
    lr_gamma: float
    eval_every: int
    channels_last: Toggle
    deterministic: Toggle

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.dataset]

    @property
    def network(self) -> str:
        """``cifar`` or ``imagenet``: which evaluation network the dataset uses."""
        return self.recipe.network

    def replace(self, **changes: Any) -> ResolvedTrainConfig:
        """A validated copy with ``changes`` applied."""
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        """Range checks of every value (:class:`~fastnas.errors.ConfigError` naming the option)."""
        normalise_dataset(self.dataset)
        for name in ("epochs", "batch_size", "C", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.layers < 3:
            raise ConfigError(f"--layers must be >= 3 (two cells are reductions), got {self.layers}")
        for name in (
            "auxiliary_weight",
            "drop_path",
            "label_smoothing",
            "lr",
            "lr_min",
            "momentum",
            "weight_decay",
            "grad_clip",
            "lr_gamma",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if not 0 < self.lr <= 10:
            raise ConfigError(f"--lr must be in (0, 10], got {self.lr}")
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"--lr-min must be in [0, lr={self.lr}], got {self.lr_min}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"--weight-decay must be in [0, 1], got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if not 0 <= self.auxiliary_weight <= 10:
            raise ConfigError(f"--auxiliary-weight must be in [0, 10], got {self.auxiliary_weight}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.cutout < 0:
            raise ConfigError(f"--cutout must be >= 0 (0 = off), got {self.cutout}")
        check_cutout(self.cutout, normalise_dataset(self.dataset))
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"unknown precision {self.precision!r}; use {', '.join(PRECISION_CHOICES)}")
        for name, value in (("--limit", self.limit), ("--test-limit", self.test_limit)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 image, got {value}")
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every must be >= 0, got {self.eval_every}")
        self.check_run_settings()
        self.check_network_size()

    def check_network_size(self) -> None:
        """Refuse, before anything is built, an evaluation network that cannot fit this machine (a
        closed-form lower bound of its weights and modules: one op per genotype pair)."""
        nodes = max(len(cell.nodes) for _, cell in self.load_genotype().cells)
        estimate = estimate_supernet(
            "darts", self.C, self.layers, nodes, conv_ops=1, op_copies=2 * nodes,
            stem="imagenet" if normalise_dataset(self.dataset) == "imagenet" else "cifar",
        )  # fmt: skip
        sizes = f"--C {self.C}, --layers {self.layers}"
        check_supernet_size(
            estimate, sizes, activations=False, what="the evaluation network",
            typical="the DARTS CIFAR network: C=36, 20 cells; ImageNet: C=48, 14 cells",
        )  # fmt: skip

    def load_genotype(self) -> Genotype:
        return load_genotype(self.genotype)

    def to_json(self) -> dict[str, Any]:
        return self.field_values()

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> ResolvedTrainConfig:
        """Read a ``config.json`` back: every key known, every value of the right type and in range."""
        if isinstance(data, dict):
            data = with_added_keys(data, field_types(cls))
        return cls.checked(where, **cls.json_fields(data, where))
