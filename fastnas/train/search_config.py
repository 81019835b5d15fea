"""Configuration of a search run.

:class:`SearchConfig` is what a user asks for: ``None`` in a hyper-parameter means "the method's
published default" and ``method_options`` holds only the options the user set. :meth:`SearchConfig.resolved`
turns it into a :class:`ResolvedSearchConfig`, in which every hyper-parameter has its value, the method
options are the method's typed options object (defaults filled in) and the run has its name. The resolved
config is what a run uses and what ``config.json`` records; reading ``config.json`` back checks every
key and type (:meth:`ResolvedSearchConfig.from_json`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import torch

from fastnas.algorithms import MethodOptions, SearchDefaults
from fastnas.data import DATASET_NAMES
from fastnas.errors import ConfigError, MissingPathError
from fastnas.fields import field_types, setting
from fastnas.genotype import MAX_NODES_PER_CELL
from fastnas.methods import METHODS, get_method
from fastnas.nn.sizing import check_supernet_size, estimate_space
from fastnas.nn.supernet_options import SupernetOptions, SupernetShape, supernet_options_class
from fastnas.spaces import SPACE_DEFAULTS, SPACE_NAMES, DartsSpace, NB201Space, build_space
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

__all__ = ["ResolvedSearchConfig", "SearchConfig", "check_hyper_parameters"]

_HYPER = tuple(f.name for f in dataclasses.fields(SearchDefaults))
#: asked-for settings that the resolved config records in another form
_NOT_RESOLVED = ("method", "method_options", "supernet_options", "run_name", "global_batch_size")
#: keys of the config.json of earlier versions, now under "supernet_options"
_FLAT_SUPERNET_KEYS = ("executor", "partial_k", "partial_bypass")


SEARCH_DATASETS: tuple[str, ...] = (*DATASET_NAMES, "imagenet")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}  # ImageNet: at least 2
_IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "digits": 8}
_TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1_497}  # the standard training sets
#: PC-DARTS' ImageNet protocol: 10% / 2.5% of each class, 224-pixel crops
IMAGENET_SEARCH_DEFAULTS: dict[str, float | int] = {
    "subset_weights": 0.1,
    "subset_arch": 0.025,
    "image_size": 224,
}


@dataclass
class SearchConfig:
    """Everything that defines a search run, as asked for (``None`` = the published default). Each
    field's ``setting`` is also its command-line flag (``fastnas search --help``)."""

    method: str = setting("darts", "search method", choices=lambda: tuple(METHODS))
    method_options: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})  # {"order": 2}
    #: the supernet options given (:class:`~fastnas.nn.SupernetOptions`), e.g. {"executor": "fast"}
    supernet_options: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    space: str = setting("darts", "search space", choices=SPACE_NAMES)
    nodes: int = setting(4, "intermediate nodes per cell (darts space; the cell concatenates all of them)")
    normal_types: int = setting(
        1, "distinct normal-cell types: 1 (DARTS) or 3, one per stage (Paganucci, 2020)"
    )
    ops: tuple[str, ...] = setting(
        (),
        "candidate ops: a preset (darts, darts-extended, thesis, nb201) or a comma-separated list of op "
        "names (default: the space's own)",
        metavar="OPS",
    )
    exclude_ops: tuple[str, ...] = setting((), "ops to remove from the space, comma-separated", metavar="OPS")
    nb201_table: str | None = setting(
        None,
        "NAS-Bench-201 results (.csv like nb201.csv, or the official .pth): log each epoch's cell accuracy",
        metavar="PATH",
    )
    dataset: str = setting("cifar10", "dataset", choices=SEARCH_DATASETS)
    data_dir: str | None = setting(
        None,
        "CIFAR python-batch folder, image-folder tree, or a .tar(.gz) of such a tree (ImageNet: a folder or "
        ".tar holding train/<wnid>/*.JPEG)",
        metavar="PATH",
    )
    download: bool = setting(False, "let torchvision download the dataset", const=True)
    limit: int | None = setting(None, "use only the first N training images (quick runs)", metavar="N")
    subset_weights: float | None = setting(
        None, "ImageNet: share of each class's images that trains the weights (PC-DARTS: 0.1)"
    )
    subset_arch: float | None = setting(
        None, "ImageNet: share of each class's images that trains the architecture (PC-DARTS: 0.025)"
    )
    image_size: int | None = setting(None, "ImageNet: crop size of the search images (default 224)")
    workers: int = setting(4, "ImageNet: data-loading worker processes (JPEG decoding); 0 = in process")
    loader: str = loader_setting()
    epochs: int | None = setting(None, "search epochs")
    batch_size: int | None = setting(
        None, "batch size of each level, per process (the effective batch is this x the world size)"
    )
    global_batch_size: int | None = global_batch_setting()
    lr_scaling: str = lr_scaling_setting()
    dist_backend: str = dist_backend_setting()
    C: int | None = setting(None, "initial channels", flag="--C", aliases=("--init-channels",))
    layers: int | None = setting(None, "number of cells (darts), cells per stage (nb201)")
    lr: float | None = setting(None, "weight learning rate (SGD)")
    lr_min: float | None = setting(None, "final weight learning rate of the cosine schedule")
    momentum: float | None = setting(None, "SGD momentum")
    weight_decay: float | None = setting(None, "weight decay of the weights")
    grad_clip: float | None = setting(None, "gradient-norm clip of the weights (0 = off)")
    arch_lr: float | None = setting(None, "architecture learning rate (Adam)")
    arch_betas: tuple[float, float] | None = setting(None, "Adam betas of the architecture", cli=False)
    arch_weight_decay: float | None = setting(None, "weight decay of the architecture parameters")
    arch_grad_clip: float | None = setting(None, "gradient-norm clip of the architecture (0 = off)")
    train_portion: float | None = setting(
        None,
        "share of the training set that trains the weights (default 0.5); the rest trains the architecture",
    )
    seed: int = setting(2, "random seed (data order, augmentation, initialisation)")
    device: str = device_setting()
    precision: str = setting("fp32", "autocast precision (GPU runs)", choices=PRECISIONS)
    deterministic: bool = setting(
        True,
        "allow non-deterministic kernels (CPU runs are deterministic by default)",
        flag="--nondeterministic",
        const=False,
    )
    tensorboard: bool = tensorboard_setting()
    compile: bool = setting(
        False,
        "torch.compile the forward and backward of both levels of the search step (the first step of "
        "each level compiles; architecture weights stay tensors, so later steps never recompile)",
        const=True,
    )
    cuda_graph: bool = setting(
        False,
        "capture the first-order bilevel step (both levels, both optimisers) in a CUDA graph and replay "
        "it every iteration (CUDA, one process, fp32 or bf16, first order; not for EDAS, DDSAS, EnTranNAS)",
        const=True,
    )
    out_dir: str = out_dir_setting()
    run_name: str | None = setting(None, "run directory name (default: method-dataset-seed-time)")

    def resolved(self) -> ResolvedSearchConfig:
        """The run's configuration: published defaults filled in, options typed, values validated."""
        method = get_method(self.method)
        if self.space not in SPACE_NAMES:
            raise ConfigError(f"unknown search space {self.space!r}; available: {', '.join(SPACE_NAMES)}")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        imagenet = self.dataset == "imagenet"
        for name, default in IMAGENET_SEARCH_DEFAULTS.items():
            if values[name] is not None and not imagenet:
                raise ConfigError(
                    f"--{name.replace('_', '-')} applies to --dataset imagenet only (CIFAR and digits split "
                    "their training set by --train-portion)"
                )
            values[name] = (default if values[name] is None else values[name]) if imagenet else 0
        options = method.make_options(self.method_options, dataset=self.dataset)
        try:
            supernet = method.make_supernet_options(self.supernet_options)
        except ConfigError as exc:
            raise ConfigError(f"supernet options: {exc}") from None
        world_size = env_world_size()
        values["batch_size"] = per_rank_batch(self.batch_size, self.global_batch_size, world_size)
        given = {k: values[k] for k in _HYPER}
        published = method.algorithm.defaults_for(self.dataset)
        hyper = dataclasses.replace(published, **SPACE_DEFAULTS[self.space]).updated(**given)
        hyper = method.algorithm.adjust_hyper(hyper, options, given)
        hyper = dataclasses.replace(
            hyper,
            arch_betas=(hyper.arch_betas[0], hyper.arch_betas[1]),
            lr=scaled_lr(hyper.lr, world_size, self.lr_scaling),
            lr_min=scaled_lr(hyper.lr_min, world_size, self.lr_scaling),
        )
        run_name = self.run_name or (
            f"{method.name}-{self.dataset}-s{self.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        resolved = ResolvedSearchConfig(
            method=method.name,
            options=options,
            supernet=supernet,
            **{k: v for k, v in values.items() if k not in (*_HYPER, *_NOT_RESOLVED)},
            **dataclasses.asdict(hyper),
            run_name=run_name,
            world_size=world_size,
        )
        resolved.validate()
        # options that the run's epochs make useless (PC-DARTS' arch_start_epoch, EDAS' warm-up): checked
        # for new runs only, so that the config.json of an earlier run still loads (rank, plot, resume)
        method.algorithm.check_schedule(options, resolved.epochs)
        return resolved


@dataclass(frozen=True)
class ResolvedSearchConfig(RunConfig):
    """A search run's configuration with every value known (written to ``config.json``)."""

    run_kind: ClassVar[str] = "a search run directory"
    own_key: ClassVar[str] = "method"

    method: str
    options: MethodOptions
    supernet: SupernetOptions  # config.json: "supernet_options"
    space: str
    nodes: int
    normal_types: int
    ops: tuple[str, ...]  # empty: the space's own ops
    exclude_ops: tuple[str, ...]
    nb201_table: str | None  # None: no table
    dataset: str
    data_dir: str | None  # None: the dataset needs no folder (digits) or the default location
    download: bool
    limit: int | None  # None: every training image
    subset_weights: float  # ImageNet only (0 elsewhere)
    subset_arch: float
    image_size: int  # ImageNet crop size (32 for CIFAR, 8 for digits: informational)
    epochs: int
    batch_size: int
    C: int
    layers: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float  # <= 0: off
    arch_lr: float
    arch_betas: tuple[float, float]
    arch_weight_decay: float
    arch_grad_clip: float  # <= 0: off
    train_portion: float
    deterministic: bool
    compile: bool
    cuda_graph: bool

    def build_space(self) -> DartsSpace | NB201Space:
        """The search space this config names (op list, node count)."""
        options: dict[str, int] = {}
        if self.space != "nb201":
            options = {
                "num_nodes": self.nodes,
                "multiplier": self.nodes,
                "num_normal_types": self.normal_types,
            }
        return build_space(self.space, ops=self.ops, exclude_ops=self.exclude_ops, **options)

    @property
    def hyper_parameters(self) -> SearchDefaults:
        return SearchDefaults(**{k: getattr(self, k) for k in _HYPER})

    def validate(self) -> None:
        """Range checks of every value (:class:`~fastnas.errors.ConfigError` naming the option)."""
        if self.space not in SPACE_NAMES:
            raise ConfigError(f"unknown search space {self.space!r}; available: {', '.join(SPACE_NAMES)}")
        if self.dataset not in SEARCH_DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(SEARCH_DATASETS)}")
        if self.dataset == "imagenet":
            for name in ("subset_weights", "subset_arch"):
                value = getattr(self, name)
                if not 0 < value <= 1:
                    raise ConfigError(
                        f"--{name.replace('_', '-')} must be a share of each class in (0, 1], got {value}"
                    )
            if self.subset_weights + self.subset_arch > 1:
                raise ConfigError(
                    f"--subset-weights {self.subset_weights} and --subset-arch {self.subset_arch} add up to "
                    "more than 1; the two subsets are disjoint"
                )
            if self.image_size < 32:
                raise ConfigError(
                    f"--image-size must be >= 32 (the stems divide it by 8), got {self.image_size}"
                )
            if self.space == "nb201":
                raise ConfigError(
                    "the NAS-Bench-201 space is searched on CIFAR-sized images; use --space darts"
                )
        self.check_run_settings()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.nb201_table is not None and self.space != "nb201":
            raise ConfigError("--nb201-table needs --space nb201")
        if self.nb201_table is not None and not Path(self.nb201_table).is_file():
            raise MissingPathError(
                f"the NAS-Bench-201 table {self.nb201_table} does not exist or is not a file"
            )
        if self.space == "nb201" and self.normal_types != 1:
            raise ConfigError(
                "the NAS-Bench-201 space has one cell type; --normal-types applies to darts spaces"
            )
        if self.space == "nb201" and self.nodes != 4:
            raise ConfigError(
                "the NAS-Bench-201 cell has a fixed topology; --nodes applies to the darts space only"
            )
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1, got {self.nodes}")
        if self.nodes > MAX_NODES_PER_CELL:  # else the genotype derived after the first epoch is refused
            raise ConfigError(
                f"--nodes must be <= {MAX_NODES_PER_CELL} (the most intermediate nodes a derived cell may "
                f"have), got {self.nodes}"
            )
        if self.normal_types not in (1, 3):
            raise ConfigError(f"--normal-types must be 1 or 3 (one per stage), got {self.normal_types}")
        self.build_space()  # unknown ops in --ops / --exclude-ops fail here, before any run starts
        if self.limit is not None and self.limit < 2:
            raise ConfigError(
                f"--limit must be >= 2 images (half train the weights, half the architecture), "
                f"got {self.limit}"
            )
        check_hyper_parameters(self.hyper_parameters, space=self.space)
        self.check_supernet_size()
        if self.cuda_graph and self.precision == "fp16":
            raise ConfigError(
                "--cuda-graph cannot capture fp16 loss scaling (GradScaler syncs with the host every "
                "step); use --precision bf16 or fp32 with --cuda-graph"
            )

    def check_supernet_size(self) -> None:
        """Refuse, before anything is built, a supernet (of any stage) that cannot fit this machine: a
        closed-form lower bound of its size (:func:`fastnas.nn.sizing.check_supernet_size`)."""
        method = get_method(self.method)
        space = self.build_space()
        builder = method.supernet(method.algorithm.prepare_space(space), self.options)
        plans = method.algorithm.stage_plans(self.options, self.C, self.layers, self.epochs)
        imagenet = self.dataset == "imagenet"
        on_cpu = self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())
        nodes = "" if self.space == "nb201" else f", --nodes {self.nodes}"
        pixels = f", --image-size {self.image_size}" if imagenet else ""
        images = self.limit or _TRAIN_IMAGES.get(self.dataset)  # a batch holds at most that many
        batch = min(self.batch_size, images) if images else self.batch_size
        for plan in plans:
            # the options' checks against the sizes and the supernet's executors, before anything is built
            builder.check(SupernetShape(plan.C, plan.layers, options=self.supernet))
            estimate = estimate_space(
                space, plan.C, plan.layers, options=self.options, partial_k=self.supernet.partial_k,
                num_classes=_NUM_CLASSES.get(self.dataset, 2),
                in_channels=1 if self.dataset == "digits" else 3,
                image_size=self.image_size if imagenet else _IMAGE_SIZES.get(self.dataset, 32),
                stem="imagenet" if imagenet else "cifar", all_ops=plan.index == 0,
            )  # fmt: skip
            stage = f"stage {plan.index + 1} of " if len(plans) > 1 else ""
            sizes = f"{stage}--C {plan.C}, --layers {plan.layers}{nodes}{pixels}"
            check_supernet_size(estimate, sizes, batch_size=batch, on_cpu=on_cpu)

    def to_json(self) -> dict[str, Any]:
        values = self.field_values()
        values["method_options"] = values.pop("options").to_json()
        values["supernet_options"] = values.pop("supernet").to_json()
        values["arch_betas"] = list(self.arch_betas)
        values["ops"], values["exclude_ops"] = list(self.ops), list(self.exclude_ops)
        return values

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> ResolvedSearchConfig:
        """Read a ``config.json`` back: every key known, every value of the right type and in range."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a JSON object of settings, got {type(data).__name__}")
        data = with_added_keys(dict(data), field_types(cls))
        options = data.pop("method_options", {})
        supernet_values = data.pop("supernet_options", None)
        if supernet_values is None:  # earlier versions: flat keys
            supernet_values = {k: data.pop(k) for k in _FLAT_SUPERNET_KEYS if k in data}
        method_name = data.get("method")
        if not isinstance(method_name, str):
            raise ConfigError(f"{where}: 'method' must be a method name, got {method_name!r}")
        method = get_method(method_name)
        fields_ = cls.json_fields(data, where, exclude=("options", "supernet"))
        try:
            opts = method.make_options(options)
            supernet = supernet_options_class().from_mapping(supernet_values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cls.checked(where, options=opts, supernet=supernet, **fields_)


def check_hyper_parameters(h: SearchDefaults, space: str = "darts") -> None:
    """Range checks of search hyper-parameters (finite numbers, positive sizes and rates; a gradient
    clip of 0 means no clipping, a negative one is refused)."""
    for name in _HYPER:
        for value in getattr(h, name) if name == "arch_betas" else (getattr(h, name),):
            if isinstance(value, float) and not math.isfinite(value):  # (an int is; a huge one overflows)
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("grad_clip", "arch_grad_clip"):
        if getattr(h, name) < 0:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be >= 0 (the gradient-norm bound; 0 = no clipping), "
                f"got {getattr(h, name)}"
            )
    for name in ("epochs", "batch_size", "C", "layers"):
        if getattr(h, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(h, name)}")
    if space != "nb201" and h.layers < 3:
        raise ConfigError(f"--layers must be >= 3 (two cells are reductions), got {h.layers}")
    if not 0 < h.lr <= 10:
        raise ConfigError(f"--lr must be in (0, 10], got {h.lr}")
    if not 0 <= h.lr_min <= h.lr:
        raise ConfigError(f"--lr-min must be in [0, lr={h.lr}], got {h.lr_min}")
    if not 0 < h.arch_lr <= 10:
        raise ConfigError(f"--arch-lr must be in (0, 10], got {h.arch_lr}")
    if not 0 <= h.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {h.momentum}")
    for name in ("weight_decay", "arch_weight_decay"):
        if not 0 <= getattr(h, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(h, name)}")
    if not all(0 <= b < 1 for b in h.arch_betas):
        raise ConfigError(f"arch_betas must be in [0, 1), got {list(h.arch_betas)}")
    if not 0 < h.train_portion < 1:
        raise ConfigError(f"--train-portion must be in (0, 1), got {h.train_portion}")
