"""The settings that scale a run out, shared by ``fastnas search`` and ``fastnas train``: the input
pipeline (``--loader``), the batch over many processes (``--global-batch-size``), the learning-rate rule
(``--lr-scaling``) and the torch.distributed backend (``--dist-backend``). The runtime side is
:mod:`fastnas.train.distributed`."""

from __future__ import annotations

from typing import Any

from fastnas.errors import ConfigError
from fastnas.fields import setting

__all__ = [
    "ADDED_KEYS",
    "BACKENDS",
    "LOADERS",
    "LR_SCALINGS",
    "check_scaling_choices",
    "dist_backend_setting",
    "global_batch_setting",
    "loader_setting",
    "lr_scaling_setting",
    "per_rank_batch",
    "scaled_lr",
    "with_added_keys",
]

LOADERS: tuple[str, ...] = ("torch", "dali")
#: keys that config.json files of earlier versions lack, with the value those runs used
ADDED_KEYS: dict[str, object] = {
    "loader": "torch",
    "lr_scaling": "linear",
    "dist_backend": "auto",
    "world_size": 1,
    "sync_bn": False,
    "tensorboard": False,
    "compile": False,
    "cuda_graph": False,
    "epoch_base": 0,  # earlier runs numbered the epochs in their files from 0 (fastnas.train.run_state)
    "run_id": "",  # earlier runs had no run id (fastnas.train.checkpoint.check_run_binding)
}
LR_SCALINGS: tuple[str, ...] = ("linear", "none")
BACKENDS: tuple[str, ...] = ("auto", "nccl", "gloo")


def loader_setting() -> Any:
    return setting(
        "torch",
        "input pipeline: torch (tensors on the device / torchvision workers) or dali (NVIDIA DALI, GPU "
        'decoding and augmentation; pip install "fastnas[dali]")',
        choices=LOADERS,
    )


def global_batch_setting() -> Any:
    return setting(
        None,
        "the effective batch over all processes instead of --batch-size (under torchrun it must divide by "
        "the world size)",
        metavar="N",
    )


def lr_scaling_setting() -> Any:
    return setting(
        "linear",
        "torchrun: linear multiplies --lr and --lr-min (given or published) by the world size, as the "
        "effective batch grows as much; none keeps them. One process always runs the published recipe",
        choices=LR_SCALINGS,
    )


def dist_backend_setting() -> Any:
    return setting(
        "auto", "torchrun: torch.distributed backend (auto: nccl on GPUs, gloo on CPUs)", choices=BACKENDS
    )


def per_rank_batch(batch_size: int | None, global_batch_size: int | None, world_size: int) -> int | None:
    """The batch of each process: ``--batch-size`` as given, or ``--global-batch-size`` split over the
    ``world_size`` processes (None: the recipe's batch per process)."""
    if global_batch_size is None:
        return batch_size
    if batch_size is not None:
        raise ConfigError(
            "give --batch-size (per process) or --global-batch-size (over all processes), not both"
        )
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ConfigError(
            f"--global-batch-size {global_batch_size} does not divide by the world size {world_size} "
            f"(torchrun --nproc_per_node x --nnodes); choose a multiple of {world_size}, e.g. "
            f"{max(world_size, global_batch_size // world_size * world_size)}"
        )
    return global_batch_size // world_size


def scaled_lr(lr: float, world_size: int, scaling: str) -> float:
    """The learning rate for ``world_size`` processes: ``linear`` multiplies the single-GPU rate by the
    world size (the effective batch grows by the same factor; Goyal et al. 2017), ``none`` keeps it.
    World size 1 always keeps the published recipe."""
    if scaling not in LR_SCALINGS:
        raise ConfigError(f"--lr-scaling must be one of {', '.join(LR_SCALINGS)}, got {scaling!r}")
    return lr * world_size if scaling == "linear" else lr


def with_added_keys(data: dict[str, object], keys: object) -> dict[str, object]:
    """``data`` (a config.json) with the :data:`ADDED_KEYS` among ``keys`` filled in where absent, so
    runs of earlier versions still resume."""
    return {**{k: v for k, v in ADDED_KEYS.items() if k in keys}, **data}  # type: ignore[operator]


def check_scaling_choices(config: Any) -> None:
    """``loader``, ``lr_scaling``, ``dist_backend`` and ``world_size`` of a resolved config in range."""
    for name, choices in (("loader", LOADERS), ("lr_scaling", LR_SCALINGS), ("dist_backend", BACKENDS)):
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}"
            )
    if config.world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {config.world_size}")
