"""The three loaders of a search: weights, architecture, and evaluation (the architecture half, no
augmentation).

CIFAR-10/100 and digits are held as tensors (:class:`~fastnas.data.TensorBatchLoader`) and split by
``train_portion`` (DARTS: half and half). ImageNet (``--dataset imagenet``) follows PC-DARTS' protocol:
random subsets drawn per class, ``subset_weights`` (10%) of each class for the weights and a disjoint
``subset_arch`` (2.5%) for the architecture (:func:`~fastnas.data.imagenet.class_subsets`); JPEGs are
decoded once per epoch in ``workers`` processes and resized on the fly
(:class:`~fastnas.data.imagenet.FolderBatchLoader`). Every loader is an
:class:`~fastnas.data.loader.EpochBatches`: another pipeline (DALI) plugs in by providing one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Subset

from fastnas.data import TensorBatchLoader, limit_indices, load_dataset, search_split
from fastnas.data.imagenet import FolderBatchLoader, class_subsets, imagenet_transform, load_imagenet_folder
from fastnas.data.loader import EpochBatches
from fastnas.errors import ConfigError
from fastnas.train.search_config import ResolvedSearchConfig

__all__ = ["SearchData", "build_search_data"]


@dataclass
class SearchData:
    """The loaders of a search and the shape of its images."""

    weights: EpochBatches
    arch: EpochBatches
    evaluation: EpochBatches
    num_classes: int
    in_channels: int


def build_search_data(
    config: ResolvedSearchConfig, device: torch.device, shard: tuple[int, int] = (0, 1)
) -> SearchData:
    """The loaders for ``config`` on ``device``; ``shard=(rank, world_size)`` loads that process's share
    of every epoch (torchrun). ``config.loader == "dali"`` builds NVIDIA DALI pipelines instead
    (:mod:`fastnas.data.dali`)."""
    if config.loader == "dali":
        from fastnas.data.dali import require_dali

        require_dali()  # a clear message before any data is read
    if config.dataset == "imagenet":
        return _imagenet_data(config, device, shard)
    train_set = load_dataset(config.dataset, config.data_dir, split="train", download=config.download)
    indices = limit_indices(torch.arange(len(train_set)), config.limit)
    weight_idx, arch_idx = search_split(len(indices), config.train_portion)
    weight_idx, arch_idx = indices[weight_idx], indices[arch_idx]
    if len(weight_idx) == 0 or len(arch_idx) == 0:
        raise ConfigError("the search split left no images for one of the halves; raise --limit")

    def loader(part: torch.Tensor, augment: bool, seed: int) -> EpochBatches:
        if config.loader == "dali":
            from fastnas.data.dali import DaliTensorLoader

            return DaliTensorLoader(
                train_set,
                part,
                config.batch_size,
                augment=augment,
                shuffle=augment,
                seed=seed,
                device=device,
                shard=shard,
            )
        return TensorBatchLoader(
            train_set,
            part,
            batch_size=config.batch_size,
            augment=augment,
            shuffle=augment,
            seed=seed,
            device=device,
            shard=shard,
        )

    return SearchData(
        weights=loader(weight_idx, augment=True, seed=config.seed),
        arch=loader(arch_idx, augment=True, seed=config.seed + 1),
        evaluation=loader(arch_idx, augment=False, seed=config.seed),
        num_classes=train_set.num_classes,
        in_channels=train_set.in_channels,
    )


def _imagenet_data(config: ResolvedSearchConfig, device: torch.device, shard: tuple[int, int]) -> SearchData:
    augmented = load_imagenet_folder(config.data_dir, "train", image_size=config.image_size)
    plain = copy.copy(augmented)  # the same file list (scanned once), the test-time transforms
    plain.transform = imagenet_transform(False, config.image_size, round(config.image_size * 256 / 224))
    targets = list(augmented.targets)
    kept = list(range(len(targets)))
    if config.limit is not None and config.limit < len(targets):  # a seeded choice: folders sort by class
        kept = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[
            : config.limit
        ].tolist()
    weight_part, arch_part = class_subsets(
        [targets[i] for i in kept], (config.subset_weights, config.subset_arch), config.seed
    )
    weight_idx, arch_idx = [kept[i] for i in weight_part], [kept[i] for i in arch_part]
    if not weight_idx or not arch_idx:
        raise ConfigError(
            f"ImageNet subsets of {len(kept)} images left {len(weight_idx)} for the weights and "
            f"{len(arch_idx)} for the architecture; raise --subset-weights / --subset-arch (or --limit)"
        )

    def loader(dataset: Any, indices: list[int], shuffle: bool, seed: int) -> EpochBatches:
        if config.loader == "dali":
            from fastnas.data.dali import DaliFolderLoader

            return DaliFolderLoader.from_dataset(
                Subset(dataset, indices), config.batch_size, train=shuffle, seed=seed, device=device,
                workers=config.workers, shard=shard, image_size=config.image_size,
            )  # fmt: skip
        return FolderBatchLoader(
            Subset(dataset, indices),
            config.batch_size,
            shuffle=shuffle,
            seed=seed,
            device=device,
            workers=config.workers,
            shard=shard,
        )

    return SearchData(
        weights=loader(augmented, weight_idx, shuffle=True, seed=config.seed),
        arch=loader(augmented, arch_idx, shuffle=True, seed=config.seed + 1),
        evaluation=loader(plain, arch_idx, shuffle=False, seed=config.seed),
        num_classes=len(augmented.classes),
        in_channels=3,
    )
