"""NVIDIA DALI input pipelines (``--loader dali``): the ImageNet folder and CIFAR tensor loaders on DALI.

Both loaders have the :class:`~fastnas.data.loader.EpochBatches` interface of the torch loaders they
replace (:class:`~fastnas.data.imagenet.FolderBatchLoader`, :class:`~fastnas.data.loader.TensorBatchLoader`):
``set_epoch``, ``len``, ``num_examples`` and iteration yielding ``(x, y)`` on the loader's device, x float32
normalised ``[B, C, H, W]``, y int64 ``[B]``. With a CUDA device, decoding (nvJPEG, ``device="mixed"``) and
augmentation run on that GPU; on a CPU device the pipelines run on DALI's CPU operators (``device_id=None``).

DALI is optional: nothing here imports it at module import time; the loaders call :func:`require_dali`,
which raises :class:`~fastnas.errors.ConfigError` with the install command when it is missing.

Epochs are deterministic per ``(seed, epoch)``: the order of an epoch comes from
:func:`~fastnas.data.loader.epoch_generator` (the same permutation on every rank) and a new DALI pipeline
is built for each epoch, seeded from ``(seed, epoch, rank)``, so an epoch replays exactly after
``set_epoch`` and whether or not earlier epochs ran in this process. A loader that shuffles (a training
loader) or drops its last batch keeps the first ``total - total % world`` examples of the epoch's order,
so every rank takes the same number of examples and batches (a different tail is left out each shuffled
epoch); otherwise (evaluation) every example is visited exactly once over the ranks.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import Subset

from fastnas.data.base import ImageDataset
from fastnas.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from fastnas.data.loader import (
    DatasetBatches,
    EpochBatches,
    check_shard,
    checked_indices,
    epoch_generator,
    pad_images,
    shard_positions,
)
from fastnas.errors import ConfigError, DataError

__all__ = [
    "DALI_MISSING",
    "DaliFolderLoader",
    "DaliTensorLoader",
    "dali_available",
    "folder_file_list",
    "require_dali",
]

DALI_MISSING = (
    '--loader dali needs NVIDIA DALI, which is not installed: pip install "fastnas[dali]" '
    "(or nvidia-dali-cuda130); or use --loader torch"
)

#: torchvision ``ColorJitter(0.4, 0.4, 0.4, 0.2)`` as DALI ``color_twist`` ranges (see DaliFolderLoader).
JITTER = 0.4
HUE_DEGREES = 0.2 * 360.0


def require_dali() -> ModuleType:
    """The ``nvidia.dali`` module (with its PyTorch plugin imported), or a :class:`ConfigError` saying how
    to install it."""
    try:
        dali = importlib.import_module("nvidia.dali")
        importlib.import_module("nvidia.dali.plugin.pytorch")
    except (ImportError, OSError) as exc:  # OSError: a DALI wheel whose native libraries do not load
        raise ConfigError(f"{DALI_MISSING} ({type(exc).__name__}: {exc})") from None
    return dali


def dali_available() -> bool:
    """Whether NVIDIA DALI (and its PyTorch plugin) can be imported."""
    try:
        require_dali()
    except ConfigError:
        return False
    return True


def folder_file_list(dataset: Any) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of a torchvision ``ImageFolder`` (its ``samples``), or of a
    ``torch.utils.data.Subset`` of one (nested subsets too), in the dataset's index order."""
    if isinstance(dataset, Subset):
        paths, labels = folder_file_list(dataset.dataset)
        indices = [int(i) for i in dataset.indices]
        return [paths[i] for i in indices], [labels[i] for i in indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise ConfigError(
            "--loader dali reads image files: it needs a torchvision ImageFolder (or a Subset of one), got "
            f"{type(dataset).__name__}; use --loader torch for this dataset"
        )
    return [str(path) for path, _ in samples], [int(label) for _, label in samples]


def pipeline_seed(seed: int, epoch: int, rank: int) -> int:
    """The DALI pipeline seed of one epoch on one rank (hashed, non-negative 31 bits)."""
    digest = hashlib.sha256(f"fastnas.dali:{int(seed)}:{int(epoch)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _resolve_device(device: torch.device | str) -> tuple[torch.device, int | None]:
    """The torch device (``cuda`` made explicit, ``cuda:N``) and DALI's ``device_id`` (None on CPU)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, None
    if dev.type != "cuda":
        raise ConfigError(f"--loader dali runs on cpu or cuda devices, got {dev}; use --loader torch")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    return torch.device("cuda", index), index


def _to_torch(output: Any, pipe: Any) -> torch.Tensor:
    """A DALI output batch (a dense TensorList) as a torch tensor on the output's device: shared through
    DLPack on the CPU with the dynamic executor (its outputs stay valid after later runs), else copied
    (on the GPU on torch's current stream)."""
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor
    from nvidia.dali.tensors import TensorGPU

    tensor = output.as_tensor()
    if not isinstance(tensor, TensorGPU) and getattr(pipe, "exec_dynamic", False):
        return torch.from_dlpack(tensor)
    return to_torch_tensor(tensor, copy=True)


def _run(pipe: Any, what: str) -> Any:
    """One ``pipe.run()``; a DALI failure (e.g. an undecodable image) becomes a one-line DataError naming
    the operator and DALI's reason."""
    try:
        return pipe.run()
    except RuntimeError as exc:
        text = str(exc)
        operator = re.search(r"operator `([^`]+)`", text)
        reason = re.search(r"encountered:\s*\n\s*(.+)", text)
        where = f" in {operator.group(1)}" if operator else ""
        detail = reason.group(1).strip() if reason else text.strip().splitlines()[-1] if text.strip() else ""
        raise DataError(f"the DALI pipeline for {what} failed{where}: {detail}") from exc


def _unreadable(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that PIL cannot open (to name the file behind a DALI decoding failure)."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception:  # any failure to read or parse the file
            bad.append(path)
    return bad


def _even(shuffle: bool, drop_last: bool) -> bool:
    """Whether an epoch keeps only a multiple of the world size (training loaders and ``drop_last``)."""
    return shuffle or drop_last


class DaliFolderLoader(EpochBatches):
    """ImageNet-style batches from image files on DALI: ``fn.readers.file`` -> ``fn.decoders.image`` (nvJPEG
    on a CUDA device) -> transforms -> ``fn.crop_mirror_normalize`` (ImageNet mean/std, CHW float32).

    ``train``: ``fn.random_resized_crop`` to ``image_size`` (area 0.08-1, aspect ratio 3/4-4/3, as
    torchvision's ``RandomResizedCrop``), colour jitter with ``fn.color_twist`` and a coin-flip mirror.
    The jitter has torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.2)`` ranges: brightness, contrast and
    saturation factors uniform in [0.6, 1.4]; torchvision's hue factor 0.2 is a fraction of a full turn of
    the HSV hue circle, so DALI's hue (in degrees) is uniform in [-72, 72]. It is not pixel-identical:
    DALI applies the four in a fixed order as one linear colour transform (hue and saturation in YIQ
    space, contrast about mid-grey rather than the image's mean grey, no clamping in between), while
    torchvision applies them in a random order in HSV/RGB. Test (``train=False``): the shorter side resized
    to ``resize`` (linear, antialiased) and a centre crop of ``image_size``, as ``Resize`` +
    ``CenterCrop``.

    ``files``/``labels`` are the whole split (e.g. :func:`folder_file_list`); each epoch permutes them with
    :func:`~fastnas.data.loader.epoch_generator` when ``shuffle`` (the same order on every rank), keeps a
    multiple of the world size when shuffling or ``drop_last`` (see the module docstring), and DALI's
    reader takes this rank's contiguous share of that order (``shard_id``/``num_shards``). The random
    transforms come from DALI's generators, seeded per ``(seed, epoch, rank)``: an epoch replays exactly,
    but the draws (unlike the order) depend on the world size. The last batch is partial (the reader's
    padding samples are cut off) unless ``drop_last``. ``workers`` is DALI's ``num_threads`` (at least 1).
    ``channels_last`` yields x in the channels-last memory format (DALI writes HWC; no extra copy).
    """

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        device: torch.device | str,
        workers: int,
        shard: tuple[int, int],
        image_size: int = 224,
    ) -> DaliFolderLoader:
        """The loader of an ImageFolder (or a Subset of one) as the search and the retraining use it:
        training = random transforms and a shuffled order; the test resize is ``image_size * 256 / 224``."""
        files, labels = folder_file_list(dataset)
        return cls(
            files, labels, batch_size, train=train, shuffle=train, seed=seed, device=device,
            image_size=image_size, resize=round(image_size * 256 / 224), workers=max(workers, 1), shard=shard,
        )  # fmt: skip

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        batch_size: int,
        *,
        train: bool,
        shuffle: bool,
        seed: int,
        device: torch.device | str = "cpu",
        image_size: int = 224,
        resize: int = 256,
        workers: int = 2,
        shard: tuple[int, int] = (0, 1),
        channels_last: bool = False,
        drop_last: bool = False,
    ) -> None:
        require_dali()
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        if len(files) != len(labels):
            raise ConfigError(f"got {len(files)} files but {len(labels)} labels; give one label per file")
        if image_size <= 0 or resize < image_size:
            raise ConfigError(f"need 0 < image_size <= resize, got image_size={image_size} resize={resize}")
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, got {workers}")
        self.files = [str(f) for f in files]
        self.labels = [int(label) for label in labels]
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.device, self._device_id = _resolve_device(device)
        self.image_size = int(image_size)
        self.resize = int(resize)
        self.workers = max(1, int(workers))
        self.shard = check_shard(shard)
        self.channels_last = bool(channels_last)
        self.drop_last = bool(drop_last)
        self._epoch = 0

    def _epoch_total(self) -> int:
        """How many examples of the epoch's order the ranks share (a multiple of the world when even)."""
        n, world = len(self.files), self.shard[1]
        return n - n % world if _even(self.shuffle, self.drop_last) else n

    @property
    def num_examples(self) -> int:
        """The examples this shard sees per epoch (DALI's contiguous share of the epoch's order)."""
        total, (rank, world) = self._epoch_total(), self.shard
        return (rank + 1) * total // world - rank * total // world

    def _build(self, files: list[str], labels: list[int]) -> Any:
        """The DALI pipeline of one epoch, reading ``files`` in this order."""
        dali = require_dali()
        fn, types = dali.fn, dali.types
        rank, world = self.shard
        size = [self.image_size, self.image_size]
        pipe = dali.Pipeline(
            batch_size=self.batch_size,
            num_threads=self.workers,
            device_id=self._device_id,
            seed=pipeline_seed(self.seed, self._epoch, rank),
            prefetch_queue_depth=2,
        )
        with pipe:
            encoded, label = fn.readers.file(
                files=files,
                labels=labels,
                shard_id=rank,
                num_shards=world,
                random_shuffle=False,
                pad_last_batch=True,
                stick_to_shard=True,
                name="Reader",
            )
            decoder = "mixed" if self._device_id is not None else "cpu"
            # like PIL in ImageFolder: EXIF orientation ignored; nvJPEG with libjpeg-turbo's chroma upsampling
            fancy = {"jpeg_fancy_upsampling": True} if decoder == "mixed" else {}
            images = fn.decoders.image(
                encoded, device=decoder, output_type=types.RGB, adjust_orientation=False, **fancy
            )
            geometry: dict[str, Any] = {}
            if self.train:
                images = fn.random_resized_crop(
                    images, size=size, random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3]
                )
                jitter = [1.0 - JITTER, 1.0 + JITTER]
                images = fn.color_twist(
                    images,
                    brightness=fn.random.uniform(range=jitter),
                    contrast=fn.random.uniform(range=jitter),
                    saturation=fn.random.uniform(range=jitter),
                    hue=fn.random.uniform(range=[-HUE_DEGREES, HUE_DEGREES]),
                )
                geometry["mirror"] = fn.random.coin_flip(probability=0.5)
            else:
                images, geometry = self._resize_center(dali, images)
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="HWC" if self.channels_last else "CHW",
                mean=[255.0 * m for m in IMAGENET_MEAN],
                std=[255.0 * s for s in IMAGENET_STD],
                **geometry,
            )
            pipe.set_outputs(images, label)
        pipe.build()
        return pipe

    def _resize_center(self, dali: ModuleType, images: Any) -> tuple[Any, dict[str, Any]]:
        """torchvision's ``Resize(resize)`` + ``CenterCrop(image_size)`` geometry, computed per sample in
        the graph: the shorter side becomes ``resize`` and the longer ``int(resize * long / short)``
        (truncated, where DALI's ``resize_shorter`` would round), the whole image mapped onto that size;
        the crop starts at ``int(round(d / 2))`` with Python's round-half-to-even (``d`` = resized minus
        crop size). Returns the resized images and the ``crop_mirror_normalize`` crop arguments."""
        fn, types, math = dali.fn, dali.types, dali.math
        shape = images.shape(dtype=types.INT32)  # H, W, C (on the CPU, also for GPU images)
        height, width = shape[0], shape[1]
        short = math.min(height, width)
        new_h, new_w = (self.resize * height) // short, (self.resize * width) // short
        images = fn.resize(
            images,
            resize_x=fn.cast(new_w, dtype=types.FLOAT),
            resize_y=fn.cast(new_h, dtype=types.FLOAT),
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        positions = []
        for extent in (new_w, new_h):
            d = extent - self.image_size
            half = d // 2
            start = half + (d % 2) * (half % 2)  # round half to even
            positions.append(fn.cast(start, dtype=types.FLOAT) / fn.cast(math.max(d, 1), dtype=types.FLOAT))
        crop = [self.image_size, self.image_size]
        return images, {"crop": crop, "crop_pos_x": positions[0], "crop_pos_y": positions[1]}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, count, batches = len(self.files), self.num_examples, len(self)
        if batches == 0:
            return
        generator = epoch_generator(self.seed, self._epoch)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        order = order[: self._epoch_total()]
        pipe = self._build([self.files[i] for i in order], [self.labels[i] for i in order])
        what = f"{n} image files (shard {self.shard[0]} of {self.shard[1]}, epoch {self._epoch})"
        mine = order[self.shard[0] * len(order) // self.shard[1] :]
        for b in range(batches):
            try:
                images, labels = _run(pipe, what)
            except DataError as exc:  # the failing sample is in this batch or a prefetched one
                ahead = mine[b * self.batch_size : (b + 3) * self.batch_size]
                bad = _unreadable([self.files[i] for i in ahead])
                if not bad:
                    raise
                raise DataError(f"{exc}; unreadable image: {bad[0]} (replace or remove the file)") from exc
            x, y = _to_torch(images, pipe), _to_torch(labels, pipe)
            take = min(self.batch_size, count - b * self.batch_size)  # cut the reader's padding samples
            x, y = x[:take], y.reshape(-1)[:take]
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)  # NHWC storage = NCHW in channels-last memory format
            # labels: copied out of DALI's buffer on the host first, so no transfer reads it late
            yield x.to(self.device), y.to(torch.int64, copy=True).to(self.device, non_blocking=True)


class DaliTensorLoader(DatasetBatches):
    """CIFAR-style batches of an in-memory :class:`~fastnas.data.ImageDataset` through DALI
    (``fn.external_source``), a drop-in for :class:`~fastnas.data.loader.TensorBatchLoader`.

    The selected images are zero-padded by the dataset's ``crop_padding`` once (uint8, HWC, host memory);
    each batch is fed in the epoch's order and DALI crops, mirrors and normalises it with one
    ``fn.crop_mirror_normalize`` (on the GPU when ``device`` is CUDA; the batch is copied there inside the
    pipeline). The epoch's order, crop offsets and flips are drawn exactly as TensorBatchLoader draws them
    (from :func:`~fastnas.data.loader.epoch_generator`, for the whole epoch, then this rank's positions
    ``rank::world``), so the batches equal TensorBatchLoader's (to float rounding) and do not depend on
    the world size. ``augment=False`` feeds the images unchanged. Cutout is not offered here.
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
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> None:
        require_dali()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        idx = checked_indices(dataset, indices)
        self.device, self._device_id = _resolve_device(device)
        self._set_options(
            dataset, batch_size, augment=augment, shuffle=shuffle, seed=seed, shard=shard, drop_last=drop_last
        )
        self.mean = tuple(255.0 * m for m in dataset.mean)
        self.std = tuple(255.0 * s for s in dataset.std)
        padded = pad_images(dataset.images[idx], self.padding)
        self._images = padded.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H+2p, W+2p, C] uint8
        self._labels = dataset.labels[idx].clone()

    @property
    def num_examples(self) -> int:
        return len(self._positions())

    def _positions(self) -> torch.Tensor:
        """This shard's positions ``rank::world`` in the epoch's order (an even share when training)."""
        even = _even(self.shuffle, self.drop_last)
        return shard_positions(int(self._labels.shape[0]), self.shard, even=even)

    def _build(self, feed: Iterator[Any]) -> Any:
        """The DALI pipeline of one epoch: external source ``feed`` -> crop, mirror, normalise."""
        dali = require_dali()
        fn, types = dali.fn, dali.types
        augment = self.padding > 0 or self.hflip
        pipe = dali.Pipeline(
            batch_size=self.batch_size,
            num_threads=1,
            device_id=self._device_id,
            seed=pipeline_seed(self.seed, self._epoch, self.shard[0]),
            prefetch_queue_depth=2,
        )
        with pipe:
            if augment:
                images, crop_y, crop_x, mirror = fn.external_source(
                    source=feed,
                    num_outputs=4,
                    batch=True,
                    layout=["HWC", "", "", ""],
                    dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32],
                )
            else:
                images = fn.external_source(source=feed, batch=True, layout="HWC", dtype=types.UINT8)
            if self._device_id is not None:
                images = images.gpu()
            options: dict[str, Any] = {}
            if augment:
                options = {
                    "crop": [self.height, self.width],
                    "crop_pos_x": crop_x,
                    "crop_pos_y": crop_y,
                    "mirror": mirror,
                }
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=list(self.mean),
                std=list(self.std),
                **options,
            )
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, batches = int(self._labels.shape[0]), len(self)
        generator = epoch_generator(self.seed, self._epoch)  # TensorBatchLoader's draws, in its order
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        offsets = torch.full((n, 2), self.padding, dtype=torch.int64)
        flips = torch.zeros(n, dtype=torch.bool)
        if self.padding > 0:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        if self.hflip:
            flips = torch.rand(n, generator=generator) < 0.5
        mine = self._positions()
        order, offsets, flips = order[mine], offsets[mine], flips[mine]
        count = len(mine)
        if batches == 0:
            return
        # crop_x = round(crop_pos_x * (W + 2p - W)): offset / (2p) is exact for these small integers
        span = float(max(2 * self.padding, 1))
        rows, cols = ((offsets[:, k].to(torch.float64) / span).to(torch.float32).contiguous() for k in (0, 1))
        mirror = flips.to(torch.int32)
        augment = self.padding > 0 or self.hflip
        slices = [slice(b * self.batch_size, min((b + 1) * self.batch_size, count)) for b in range(batches)]

        def feed() -> Iterator[Any]:
            for sl in slices:
                images = self._images[order[sl].numpy()]
                if augment:
                    yield images, rows[sl].numpy(), cols[sl].numpy(), mirror[sl].numpy()
                else:
                    yield images

        pipe = self._build(feed())
        what = f"{n} images (shard {self.shard[0]} of {self.shard[1]}, epoch {self._epoch})"
        for sl in slices:
            (images,) = _run(pipe, what)
            x = _to_torch(images, pipe).to(self.device)
            yield x, self._labels[order[sl]].to(self.device, non_blocking=True)
