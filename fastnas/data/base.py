"""The in-memory dataset record every loader and reader of :mod:`fastnas.data` shares: :class:`ImageDataset`
(uint8 images, int64 labels, normalisation and augmentation), the split names and the decoded-image cache
folder.

Images are kept as uint8 ``[N, C, H, W]`` CPU tensors; normalisation and augmentation happen batched in
:class:`fastnas.data.loader.TensorBatchLoader` (on the GPU when there is one). Imports no other module of
:mod:`fastnas.data`, so the dataset readers (:mod:`fastnas.data.cifar`, :mod:`fastnas.data.digits`) and
:mod:`fastnas.data.datasets`, which dispatches to them, all build on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fastnas.fileio import expand_user

__all__ = ["SPLITS", "ImageDataset", "cache_dir"]

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
