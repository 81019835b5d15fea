"""Datasets as uint8 image tensors: `load_dataset` (by name, dispatching to the CIFAR and digits readers)
and the DARTS search split (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019).

The dataset record :class:`~fastnas.data.base.ImageDataset`, the split names and :func:`cache_dir` are
defined in :mod:`fastnas.data.base` and re-exported here.
"""

from __future__ import annotations

import os

import torch

from fastnas.data.base import SPLITS, ImageDataset, cache_dir
from fastnas.errors import ConfigError

__all__ = ["DATASET_NAMES", "SPLITS", "ImageDataset", "cache_dir", "load_dataset", "search_split"]

DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "digits")


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, split: str = "train", download: bool = False
) -> ImageDataset:
    """Load split ``split`` ("train" or "test") of dataset ``name`` (one of :data:`DATASET_NAMES`).

    CIFAR is read from the official python batches, an image-folder tree (or a .tar/.tar.gz of one), or
    downloaded with torchvision when ``download`` is true; see :func:`fastnas.data.cifar.load_cifar`.
    ``digits`` is scikit-learn's built-in 8x8 digits set and ignores ``root``.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    if key == "digits":
        from fastnas.data.digits import load_digits_dataset

        return load_digits_dataset(split)
    from fastnas.data.cifar import load_cifar

    return load_cifar(key, root, split=split, download=download)


def search_split(num_examples: int, train_portion: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """DARTS search split (Liu et al., 2019): the first ``int(train_portion * n)`` indices train the
    weights, the rest train the architecture. Returns ``(weight_indices, arch_indices)`` as int64 tensors."""
    if not 0.0 < train_portion < 1.0:
        raise ConfigError(f"train_portion must be strictly between 0 and 1, got {train_portion}")
    if num_examples < 0:
        raise ConfigError(f"num_examples must be >= 0, got {num_examples}")
    n_train = int(train_portion * num_examples)
    if n_train == 0 or n_train == num_examples:
        raise ConfigError(
            f"search_split of {num_examples} examples with train_portion={train_portion} leaves one side "
            "empty; use more examples or a portion closer to 0.5"
        )
    indices = torch.arange(num_examples, dtype=torch.int64)
    return indices[:n_train], indices[n_train:]
