"""Datasets as uint8 image tensors: the `ImageDataset` record, `load_dataset` and the DARTS search split.

Images are kept as uint8 ``[N, C, H, W]`` CPU tensors; normalisation and augmentation happen batched in
:class:`fastnas.data.loader.TensorBatchLoader` (on the GPU when there is one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastnas.errors import ConfigError
from fastnas.fileio import expand_user

DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "digits")
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass
class ImageDataset:
    """A whole split in memory: uint8 images, int64 labels and how to normalise and augment them.

    ``mean``/``std`` are per-channel constants on the 0..1 scale; ``crop_padding`` is the zero padding of
    the random crop (0 = no crop) and ``hflip`` enables random horizontal flips (the CIFAR augmentation of
    Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageDataset.images must be a uint8 tensor [N, C, H, W], got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageDataset.labels must be int64 [N] with N={self.images.shape[0]}, got "
                f"{self.labels.dtype} with shape {tuple(self.labels.shape)}"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean/std need one value per channel ({channels}), got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (the datasets here are square)."""
        return int(self.images.shape[2])

    def subset(self, indices: torch.Tensor | list[int]) -> ImageDataset:
        """A new dataset with the selected examples (copied), same classes, statistics and augmentation."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.dim() != 1:
            raise ValueError(f"subset indices must be 1-D, got shape {tuple(idx.shape)}")
        return replace(self, images=self.images[idx].contiguous(), labels=self.labels[idx].contiguous())


def cache_dir() -> Path:
    """Folder for decoded-image caches: ``$FASTNAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastnas``,
    else ``~/.cache/fastnas``."""
    env = os.environ.get("FASTNAS_CACHE_DIR")
    if env:
        return expand_user(env, "FASTNAS_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return expand_user(xdg, "XDG_CACHE_HOME") / "fastnas"
    return expand_user("~/.cache/fastnas", "the dataset cache (set FASTNAS_CACHE_DIR)")


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
