"""scikit-learn's built-in 8x8 handwritten digits as a tiny real image dataset (no download needed).

The images are the test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin &
Kaynak, 1998), as ``sklearn.datasets.load_digits`` ships them.

1,797 grey images with values 0..16, scaled to 0..255 uint8; a fixed seeded split into 1,497 train and
300 test images. Augmentation: random crop with padding 1, no flip (digits are not mirror-symmetric).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fastnas.data.base import ImageDataset
from fastnas.errors import ConfigError

DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 20240601


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # [N, 8, 8], values 0..16
    images = np.rint(raw * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    train_idx, test_idx = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def load_digits_dataset(split: str = "train") -> ImageDataset:
    """The ``digits`` dataset; mean/std are computed from the train images (0..1 scale)."""
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; valid splits are: train, test")
    train_x, train_y, test_x, test_y = _digits_arrays()
    scaled = train_x.astype(np.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 2, 3)))
    images, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
    return ImageDataset(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.copy()),
        classes=[str(d) for d in range(10)],
        mean=mean,
        std=std,
        name="digits",
        crop_padding=1,
        hflip=False,
    )
