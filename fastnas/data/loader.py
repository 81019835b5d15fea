"""A deterministic batch loader over uint8 image tensors held on the target device (GPU-resident CIFAR).

The selected images are moved to ``device`` once; every batch is gathered, randomly cropped (zero padding,
per-sample offsets) and flipped with one flat-index gather, then normalised - no per-image Python loop
and no per-epoch host transfer. All randomness of epoch ``e`` comes from a CPU ``torch.Generator`` seeded
from ``(seed, e)`` only, so an epoch's batches are identical whether or not earlier epochs ran in this
process (resumed searches are bit-identical) and do not depend on the device. Augmentation follows
DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019): random crop with
padding 4 and horizontal flip for CIFAR; retraining adds the Cutout of DARTS' code (DeVries & Taylor,
"Improved Regularization of Convolutional Neural Networks with Cutout", 2017: a square of side ``cutout``
zeroed after normalisation).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator

import torch

from fastnas.data.base import ImageDataset
from fastnas.errors import ConfigError


def limit_indices(indices: torch.Tensor, limit: int | None) -> torch.Tensor:
    """The first ``limit`` indices (all of them when ``limit`` is None), e.g. for quick smoke runs."""
    if limit is None:
        return indices
    if limit < 0:
        raise ConfigError(f"limit must be >= 0 or None (all examples), got {limit}")
    return indices[:limit]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)`` (hashed, so nearby seeds decorrelate)."""
    digest = hashlib.sha256(f"fastnas.TensorBatchLoader:{int(seed)}:{int(epoch)}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little"))
    return generator


def crop_flip(
    source: torch.Tensor,
    sample: torch.Tensor,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
    height: int,
    width: int,
) -> torch.Tensor:
    """Gather ``source[sample]`` cropped to ``height x width`` at per-sample ``offsets`` ``[B, 2]`` (row,
    column; None = 0) and mirrored where ``flips`` ``[B]`` is true, as one gather with flat indices."""
    source = source.contiguous()
    batch, channels, src_h, src_w = sample.numel(), *source.shape[1:]
    device = source.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    if offsets is not None:
        rows = rows + offsets[:, 0:1]
        cols = cols + offsets[:, 1:2]
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    plane = src_h * src_w
    base = sample.view(batch, 1) * (channels * plane) + torch.arange(channels, device=device) * plane
    flat = base.view(batch, channels, 1, 1) + (rows * src_w).view(batch, 1, height, 1)
    flat = flat + cols.view(batch, 1, 1, width)
    return source.view(-1)[flat]


def cutout_mask(
    centers: torch.Tensor, size: int, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``[B, 1, H, W]`` mask, true inside each sample's cutout square (DARTS ``Cutout``).

    ``centers`` ``[B, 2]`` holds (row, column) centres in ``0..H-1`` / ``0..W-1``; the square covers rows
    ``clip(y - size // 2, 0, H) .. clip(y + size // 2, 0, H)`` (end exclusive) and likewise for columns, so
    squares near the border are clipped.
    """
    half = size // 2
    device = centers.device if device is None else device
    centers = centers.to(device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    y1, y2 = (centers[:, 0:1] - half).clamp(0, height), (centers[:, 0:1] + half).clamp(0, height)
    x1, x2 = (centers[:, 1:2] - half).clamp(0, width), (centers[:, 1:2] + half).clamp(0, width)
    in_rows = (rows >= y1) & (rows < y2)  # [B, H]
    in_cols = (cols >= x1) & (cols < x2)  # [B, W]
    return (in_rows[:, None, :, None] & in_cols[:, None, None, :]).contiguous()


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad ``[N, C, H, W]`` images by ``padding`` pixels on every side (any dtype, any device)."""
    if padding == 0:
        return images
    n, c, h, w = images.shape
    padded = images.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding : padding + h, padding : padding + w] = images
    return padded


def random_crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Crop each zero-padded image at ``offsets[i]`` (each in ``0..2*padding``) back to its size and flip
    where ``flips`` is true; ``offsets == padding`` and no flip returns the input."""
    sample = torch.arange(images.shape[0], device=images.device)
    return crop_flip(pad_images(images, padding), sample, offsets, flips, images.shape[2], images.shape[3])


def checked_indices(dataset: ImageDataset, indices: torch.Tensor | None) -> torch.Tensor:
    """``indices`` as a 1-D CPU int64 tensor inside ``dataset`` (None: every example)."""
    total = len(dataset)
    if indices is None:
        return torch.arange(total, dtype=torch.int64)
    idx = torch.as_tensor(indices).to(device="cpu", dtype=torch.int64)
    if idx.dim() != 1:
        raise ValueError(f"indices must be a 1-D tensor, got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= total):
        raise IndexError(
            f"indices must lie in [0, {total}) for dataset {dataset.name!r}, got "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    return idx


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(rank, world_size)`` with ``0 <= rank < world_size``."""
    rank, world = (int(v) for v in shard)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
    return rank, world


def shard_positions(total: int, shard: tuple[int, int], even: bool) -> torch.Tensor:
    """The positions of an epoch's order that process ``rank`` of ``world_size`` takes: ``rank,
    rank + world, ...`` (a distributed sampler's interleaving, so the ranks' k-th batches together are
    the k-th batch of one process with a ``world`` times larger batch). ``even`` drops the last
    ``total % world`` positions (a different tail each shuffled epoch) so that every rank takes the same
    number of steps; otherwise (evaluation) every example is visited once over the ranks."""
    rank, world = shard
    end = total - total % world if even else total
    return torch.arange(rank, end, world, dtype=torch.int64)


class EpochBatches(abc.ABC):
    """Epoch bookkeeping shared by the batch loaders: ``set_epoch`` selects the epoch whose shuffle and
    augmentation the next iteration produces; ``len`` is the number of batches. Subclasses provide
    ``num_examples``, ``batch_size`` and ``drop_last``. A loader built with ``shard=(rank, world)``
    yields only that process's share of each epoch (:func:`shard_positions`): the global order and the
    per-example random draws are those of the whole epoch, so they do not depend on the world size."""

    _epoch: int = 0
    batch_size: int
    drop_last: bool

    @property
    @abc.abstractmethod
    def num_examples(self) -> int:
        """How many examples one epoch visits."""

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else (n + b - 1) // b

    @abc.abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(x, y)`` batches of the current epoch, on the loader's device."""


class DatasetBatches(EpochBatches):
    """The options of a batch loader over examples of an in-memory :class:`ImageDataset`
    (:class:`TensorBatchLoader` and its DALI drop-in, :class:`fastnas.data.dali.DaliTensorLoader`): the
    order and batching of an epoch and the dataset's augmentation, which ``augment`` switches on."""

    shuffle: bool
    seed: int
    shard: tuple[int, int]
    padding: int
    hflip: bool
    height: int
    width: int

    def _set_options(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool,
        seed: int,
        shard: tuple[int, int],
        drop_last: bool,
    ) -> None:
        """Store the epoch and augmentation options (``shard`` checked by :func:`check_shard`) and start
        at epoch 0."""
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.shard = check_shard(shard)
        self.padding = dataset.crop_padding if augment else 0
        self.hflip = bool(augment and dataset.hflip)
        self.height, self.width = dataset.images.shape[2], dataset.images.shape[3]
        self._epoch = 0


class TensorBatchLoader(DatasetBatches):
    """Yields ``(x, y)``: x float32 normalised ``[B, C, H, W]``, y int64 ``[B]``, both on ``device``.

    ``indices`` selects examples of ``dataset`` (None = all). With ``augment`` the dataset's random crop
    (``crop_padding``) and horizontal flip (``hflip``) are applied, and with ``cutout > 0`` also a
    ``cutout x cutout`` square per image zeroed after normalisation (DARTS Cutout; its centres come from
    the same per-epoch generator, drawn after the crops and flips, so ``cutout=0`` leaves every other
    random draw unchanged). Call :meth:`set_epoch` before each epoch: the epoch is not advanced
    automatically, so an epoch can be replayed exactly.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        indices: torch.Tensor | None,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool,
        seed: int,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        cutout: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0 (0 = off), got {cutout}")
        idx = checked_indices(dataset, indices)
        self.device = torch.device(device)
        self._set_options(
            dataset, batch_size, augment=augment, shuffle=shuffle, seed=seed, shard=shard, drop_last=drop_last
        )
        self.cutout = int(cutout) if augment else 0
        images = dataset.images[idx].to(self.device)
        self._images = pad_images(images, self.padding).contiguous()
        self._labels = dataset.labels[idx].to(self.device)
        mean = torch.tensor(dataset.mean, dtype=torch.float64)
        std = torch.tensor(dataset.std, dtype=torch.float64)
        shape = (1, dataset.in_channels, 1, 1)
        self._scale = (1.0 / (255.0 * std)).to(torch.float32).view(shape).to(self.device)
        self._shift = (-mean / std).to(torch.float32).view(shape).to(self.device)

    @property
    def num_examples(self) -> int:
        return len(self._positions())

    def _positions(self) -> torch.Tensor:
        """This shard's positions in the epoch's order (an even share when training: ``shuffle``)."""
        return shard_positions(int(self._labels.shape[0]), self.shard, even=self.shuffle)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = int(self._labels.shape[0])
        generator = epoch_generator(self.seed, self._epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.padding > 0:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator).to(self.device)
        if self.hflip:
            flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        centers = None
        if self.cutout > 0:
            rows = torch.randint(0, self.height, (n, 1), generator=generator)
            cols = torch.randint(0, self.width, (n, 1), generator=generator)
            centers = torch.cat([rows, cols], dim=1).to(self.device)
        if self.shard[1] > 1:  # this rank's share; the draws above are those of the whole epoch
            mine = self._positions()
            order = order[mine]
            offsets = None if offsets is None else offsets[mine.to(self.device)]
            flips = None if flips is None else flips[mine.to(self.device)]
            centers = None if centers is None else centers[mine.to(self.device)]
            n = len(mine)
        order = order.to(self.device)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            sample = order[sl]
            if offsets is None and flips is None:
                pixels = self._images[sample]
            else:
                pixels = crop_flip(
                    self._images,
                    sample,
                    None if offsets is None else offsets[sl],
                    None if flips is None else flips[sl],
                    self.height,
                    self.width,
                )
            x = pixels.to(torch.float32).mul_(self._scale).add_(self._shift)
            if centers is not None:
                x.masked_fill_(cutout_mask(centers[sl], self.cutout, self.height, self.width), 0.0)
            yield x, self._labels[sample]
