"""ImageNet from an image-folder tree (or a .tar of one) with torchvision ``ImageFolder`` and ``DataLoader``.

ImageNet: Deng, Dong, Socher, Li, Li & Fei-Fei, "ImageNet: A Large-Scale Hierarchical Image Database",
CVPR 2009.

Layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the usual ImageFolder layout; the
test split of retraining is ``val``). ``root`` may also be a ``.tar`` / ``.tar.gz`` of such a tree (its
top level, or one folder inside it, holding ``train/``): it is extracted once into
``cache_dir()/imagenet/`` and reused.

Transforms follow the ImageNet recipe of the public code of DARTS (Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019): train = RandomResizedCrop(224),
horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.2), normalise; test = Resize(256), CenterCrop(224),
normalise. :class:`FolderBatchLoader` has the interface of :class:`~fastnas.data.TensorBatchLoader`
(``set_epoch``, ``len``, iteration yielding ``(x, y)`` on the device): the order and the worker seeds
of an epoch depend only on ``(seed, epoch)`` (and the number of workers).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fastnas.data.archives import check_tar_end, damaged_archive
from fastnas.data.base import cache_dir
from fastnas.data.limits import check_member_size, describe_member, open_image, to_rgb
from fastnas.data.loader import EpochBatches, check_shard, epoch_generator, shard_positions
from fastnas.errors import ConfigError, DataError, MissingPathError
from fastnas.fileio import expand_user

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_SPLITS: dict[str, str] = {"train": "train", "test": "val", "val": "val"}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FolderBatchLoader",
    "class_subsets",
    "imagenet_root",
    "imagenet_transform",
    "load_imagenet_folder",
]


def imagenet_transform(train: bool, image_size: int = 224, resize: int = 256) -> Callable[[Any], Any]:
    """The DARTS ImageNet transforms (train: random-resized crop, flip, colour jitter; test: resize +
    centre crop), each ending with ToTensor and the ImageNet normalisation."""
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(image_size),
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                T.ToTensor(),
                normalize,
            ]
        )
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), normalize])


def _tree_root(folder: Path) -> Path | None:
    """``folder`` if it holds ``train/`` or ``val/``, else its only sub-folder that does, else None."""
    if (folder / "train").is_dir() or (folder / "val").is_dir():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and ((subdirs[0] / "train").is_dir() or (subdirs[0] / "val").is_dir()):
        return subdirs[0]
    return None


_FILTER_REASONS = {
    "AbsolutePathError": "has an absolute path",
    "OutsideDestinationError": "would be written outside the archive's folder (a '..' path)",
    "SpecialFileError": "is a device file, FIFO or other special file",
    "AbsoluteLinkError": "is a link to an absolute path",
    "LinkOutsideDestinationError": "is a link to a place outside the archive's folder",
}


def _member_filter(archive: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """The ``data`` extraction filter of :mod:`tarfile`, plus the size bound of
    :func:`~fastnas.data.limits.check_member_size`; a refused member is a DataError naming it and what it
    is (not "damaged")."""

    def check(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo | None:
        check_member_size(archive, member)
        try:
            return tarfile.data_filter(member, destination)
        except tarfile.FilterError as exc:
            reason = _FILTER_REASONS.get(type(exc).__name__, f"is refused by tarfile ({exc})")
            raise DataError(
                f"archive {archive}: member {describe_member(member)} {reason}; fastnas extracts only files "
                "and folders that stay inside the archive's folder - remove that member"
            ) from None

    return check


def _load_rgb(path: str) -> Any:
    """torchvision's PIL loader, refusing an image of more pixels than
    :data:`~fastnas.data.limits.MAX_IMAGE_PIXELS` from its header, before it is decoded."""
    with open(path, "rb") as handle, open_image(handle, path) as img:
        return to_rgb(img)  # 16-bit grayscale scaled to 8 bits, not clipped


def _extract(archive: Path) -> Path:
    """Extract ``archive`` once into the cache (atomically: a temporary folder renamed when complete)."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    name = archive.name.split(".")[0]
    target = cache_dir() / "imagenet" / f"{name}-{key}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with damaged_archive(archive), tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter=_member_filter(archive))
            else:  # pragma: no cover - Python without extraction filters
                for member in tar.getmembers():
                    check_member_size(archive, member)
                    resolved = (tmp / member.name).resolve()
                    if not str(resolved).startswith(str(tmp.resolve())) or member.issym() or member.islnk():
                        raise DataError(
                            f"archive {archive}: member {describe_member(member)} is unsafe to extract (a "
                            "link, or a path outside the archive's folder); remove that member"
                        )
                tar.extractall(tmp)
            check_tar_end(archive, tar.offset)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def imagenet_root(root: str | os.PathLike[str] | None) -> Path:
    """The folder holding ``train/`` and/or ``val/``: ``root`` itself, its single sub-folder, or the
    extracted cache folder of a ``.tar(.gz)`` archive; clear errors otherwise."""
    if root is None:
        raise MissingPathError(
            "ImageNet needs a data directory (--data-dir): a folder with train/<wnid>/*.JPEG and "
            "val/<wnid>/*.JPEG (torchvision ImageFolder layout), or a .tar of such a tree"
        )
    path = expand_user(root, "the ImageNet data directory (--data-dir)")
    if not path.exists():
        raise MissingPathError(
            f"ImageNet data not found at {path}: expected a folder with train/<wnid>/ and val/<wnid>/ "
            "image folders, or a .tar/.tar.gz of such a tree"
        )
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise MissingPathError(f"{path} is a file but not a tar archive of an ImageNet folder tree")
        path = _extract(path)
    tree = _tree_root(path)
    if tree is None:
        raise MissingPathError(
            f"{path} has no train/ or val/ folder (nor a single sub-folder with them); ImageNet must be "
            "laid out as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
        )
    return tree


def load_imagenet_folder(
    root: str | os.PathLike[str] | None,
    split: str = "train",
    train_transform: bool | None = None,
    image_size: int = 224,
) -> Any:
    """A torchvision ``ImageFolder`` for ``split`` ("train", or "test"/"val" = the ``val`` folder), with the
    train transforms for the train split and the test transforms otherwise (unless ``train_transform``
    says which), cropping to ``image_size`` (test: after resizing to ``image_size * 256 / 224``)."""
    from torchvision.datasets import ImageFolder

    if split not in IMAGENET_SPLITS:
        raise ConfigError(f"unknown ImageNet split {split!r}; use train, test or val")
    tree = imagenet_root(root)
    folder = tree / IMAGENET_SPLITS[split]
    if not folder.is_dir():
        raise MissingPathError(
            f"ImageNet split {split!r} needs the folder {folder} (class sub-folders <wnid>/ with images); "
            f"found: {', '.join(sorted(p.name for p in tree.iterdir() if p.is_dir())) or 'nothing'}"
        )
    use_train = (split == "train") if train_transform is None else train_transform
    try:
        transform = imagenet_transform(use_train, image_size, round(image_size * 256 / 224))
        dataset = ImageFolder(str(folder), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, OSError) as exc:  # e.g. a class folder without images
        raise DataError(f"ImageNet split {split!r} at {folder}: {exc}") from None
    if len(dataset.classes) < 2:
        raise DataError(
            f"ImageNet split {split!r} at {folder} has {len(dataset.classes)} class folder(s); it needs one "
            "<wnid>/ folder per class"
        )
    return dataset


def class_subsets(targets: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Disjoint random subsets of the samples, drawn per class (PC-DARTS' ImageNet protocol: 10% of each
    class trains the weights, 2.5% the architecture): subset ``s`` takes ``fractions[s]`` of every class's
    samples in expectation: the cumulative counts are rounded systematically (one uniform draw per class),
    so a subset takes ``floor`` or ``ceil`` of its share and a class of one image still lands in subset
    ``s`` with probability ``fractions[s]``; deterministic for ``seed``. Indices come back sorted."""
    if sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"the subset fractions {list(fractions)} add up to more than 1")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(targets):
        by_class.setdefault(int(label), []).append(index)
    subsets: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        offset = float(torch.rand((), generator=generator))  # systematic rounding: one draw per class
        start, share = 0, 0.0
        for s, fraction in enumerate(fractions):
            share += fraction
            end = min(math.floor(share * len(members) + offset), len(members))
            subsets[s].extend(members[k] for k in order[start:end])
            start = end
    return [sorted(s) for s in subsets]


def _limited(n: int, limit: int | None) -> torch.Tensor:
    """All indices, or a fixed seeded choice of ``limit`` of them (sorted) - ImageFolder sorts by class,
    so a plain prefix would hold one class only."""
    if limit is None or limit >= n:
        return torch.arange(n)
    if limit < 1:
        raise ConfigError(f"limit must be >= 1 or None, got {limit}")
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=generator)[:limit].sort().values


class _SeededSamples(Dataset):
    """Indexed by ``(index, seed)``: loads ``base[index]`` with the CPU generator seeded by ``seed`` (inside
    ``fork_rng``, so the caller's random state is untouched) - the random transforms of a sample depend on
    its seed only, not on the worker that loads it."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return self.base[index]
            except DataError:
                raise
            except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for an unreadable image
                where, detail = _sample_path(self.base, index), f"{type(exc).__name__}: {exc}"
                raise DataError(
                    f"image {where} cannot be decoded ({detail}); replace or remove the file"
                ) from None


def _sample_path(dataset: Dataset, index: int) -> str:
    """The file behind sample ``index`` of an ImageFolder (possibly inside a Subset)."""
    if isinstance(dataset, Subset):
        return _sample_path(dataset.dataset, dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"#{index}"


def _worker_message(exc: DataError) -> str:
    """A DataError raised in a DataLoader worker comes back with the worker's traceback in its message;
    keep the original one-line message."""
    lines = str(exc).strip().splitlines()
    for line in reversed(lines):
        if line.startswith(("fastnas.errors.DataError: ", "DataError: ")):
            return line.split(": ", 1)[1]
    return lines[-1] if lines else str(exc)


class FolderBatchLoader(EpochBatches):
    """Batches ``(x, y)`` of an image-folder dataset on ``device``, deterministic per ``(seed, epoch)``.

    ``limit`` keeps a fixed random subset of ``limit`` images. The order and one seed per sample (for its
    random transforms) come from :func:`epoch_generator`, so an epoch is the same for any ``workers``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        device: torch.device | str = "cpu",
        workers: int = 0,
        limit: int | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.shard = check_shard(shard)
        classes = getattr(dataset, "classes", None)
        self.classes: list[str] = list(classes) if classes is not None else []
        total = len(dataset)  # type: ignore[arg-type]
        indices = _limited(total, limit)
        self.dataset: Dataset = Subset(dataset, indices.tolist()) if len(indices) < total else dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.workers = int(workers)
        self.drop_last = bool(drop_last)
        self._epoch = 0

    @property
    def num_examples(self) -> int:
        return len(self._positions())

    def _positions(self) -> torch.Tensor:
        """This shard's positions in the epoch's order (an even share when training: ``shuffle``)."""
        return shard_positions(len(self.dataset), self.shard, even=self.shuffle)  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.seed, self._epoch)
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=generator)
        if self.shard[1] > 1:  # this rank's share; the draws above are those of the whole epoch
            mine = self._positions()
            order, seeds = order[mine], seeds[mine]
        loader = DataLoader(
            _SeededSamples(self.dataset),
            batch_size=self.batch_size,
            sampler=list(zip(order.tolist(), seeds.tolist(), strict=True)),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
            persistent_workers=False,
        )
        try:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except DataError as exc:
            raise DataError(_worker_message(exc)) from None
