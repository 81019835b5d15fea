"""Datasets as cached uint8 tensors and a deterministic, device-resident batch loader."""

from fastnas.data.datasets import DATASET_NAMES, ImageDataset, cache_dir, load_dataset, search_split
from fastnas.data.loader import TensorBatchLoader, limit_indices

__all__ = [
    "DATASET_NAMES",
    "ImageDataset",
    "TensorBatchLoader",
    "cache_dir",
    "limit_indices",
    "load_dataset",
    "search_split",
]
