"""CIFAR-10/100 as uint8 tensors from python batches, image-folder trees/archives or a torchvision download.

The datasets are Krizhevsky's ("Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009): 32x32 colour images, 50,000 for training and 10,000 for testing.

Sources, tried in this order for ``root``:

1. the official python batches: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
   ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``); ``root`` may be that folder
   or its parent;
2. an image-folder tree ``root/train/<class>/*.{jpg,png}`` and ``root/test/<class>/*``;
3. a ``.tar``/``.tar.gz`` archive of such a tree (or of the python batches), given as ``root`` itself or
   found inside the folder ``root`` by name (``cifar10*.tar.gz`` for CIFAR-10), read without extracting;
4. with ``download=True``: torchvision's download of the python batches into ``root``.

JPEG/PNG files are decoded once; the decoded arrays of all splits are cached as an ``.npz`` in
:func:`fastnas.data.base.cache_dir`, keyed by the source path, size and mtime. Within a split, the
examples of an image folder are interleaved class by class (file-name order within a class), so any
prefix - such as the weight half of the DARTS split - is class balanced. Normalisation constants and
augmentation follow the public code of DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from fastnas.data.archives import check_tar_end, damaged_archive
from fastnas.data.base import SPLITS, ImageDataset, cache_dir
from fastnas.data.limits import check_file_size, check_member_size, check_pickle_opcodes, open_image, to_rgb
from fastnas.errors import ConfigError, DataError, DownloadError, MissingPathError
from fastnas.fileio import atomic_write, expand_user

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
PYTHON_FOLDERS: dict[str, str] = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_ARCHIVE_NAME = {
    "cifar10": re.compile(r"^cifar-?10([-_.].*)?\.(tar|tar\.gz|tgz)$", re.IGNORECASE),
    "cifar100": re.compile(r"^cifar-?100([-_.].*)?\.(tar|tar\.gz|tgz)$", re.IGNORECASE),
}
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class _PyLayout(NamedTuple):
    """File names of the official python-batch release."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str

    def files(self, split: str) -> tuple[str, ...]:
        return self.train if split == "train" else self.test


_PY_FILES: dict[str, _PyLayout] = {
    "cifar10": _PyLayout(tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
    "cifar100": _PyLayout(("train",), ("test",), "meta"),
}
_CACHE_VERSION = 2  # 2: images checked (decodable, same classes in both splits) when decoded
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_OFFICIAL_SIZES = {"train": 50_000, "test": 10_000}

Arrays = dict[str, np.ndarray]  # "<split>_images" uint8 [N,C,H,W], "<split>_labels" int64 [N], "classes"


def load_cifar(
    name: str, root: str | os.PathLike[str] | None, split: str = "train", download: bool = False
) -> ImageDataset:
    """Load ``split`` of ``name`` ("cifar10" or "cifar100") from the first source found at ``root``."""
    if name not in PYTHON_FOLDERS:
        raise ConfigError(f"load_cifar: unknown name {name!r}; use 'cifar10' or 'cifar100'")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")
    root_path = expand_user(root, "the data directory (--data-dir)") if root is not None else None
    source = _find_source(name, root_path) if root_path is not None else None
    if source is None and download:
        source = ("python", _download(name, root_path))
    if source is None:
        raise MissingPathError(_missing_message(name, root_path))
    kind, path = source
    if kind == "python":
        arrays = _read_python_folder(name, path, split)
    elif kind == "tree":
        entries = _scan_tree(path)
        arrays = _cached(name, path, _tree_fingerprint(entries), lambda: _decode_entries(name, entries))
    else:
        st = path.stat()
        arrays = _cached(name, path, f"{st.st_size}:{st.st_mtime_ns}", lambda: _read_archive(name, path))
    if f"{split}_images" not in arrays:
        found = [s for s in SPLITS if f"{s}_images" in arrays]
        raise MissingPathError(
            f"{_DISPLAY[name]} source {path} has no '{split}' split (found: {', '.join(found) or 'none'}); "
            f"an image-folder tree needs {split}/<class>/ folders"
        )
    _check_contents(name, arrays, path, split)
    mean, std = CIFAR_STATS[name]
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"])),
        labels=torch.from_numpy(np.asarray(arrays[f"{split}_labels"], dtype=np.int64)),
        classes=[str(c) for c in arrays["classes"]],
        mean=mean,
        std=std,
        name=name,
        crop_padding=4,
        hflip=True,
    )


def _check_contents(name: str, arrays: Arrays, source: Path, split: str) -> None:
    """The classes and labels must fit the dataset: a DataError for 1 class, more classes than the
    dataset has, or labels outside the classes; a warning for fewer classes or other image counts than the
    official release (a subset, or another dataset under the same name)."""
    classes = len(arrays["classes"])
    expected = _NUM_CLASSES[name]
    if classes < 2 or classes > expected:
        raise DataError(
            f"{_DISPLAY[name]} source {source} has {classes} class(es); {_DISPLAY[name]} has {expected} - "
            "check that --dataset names the right dataset and the folder holds it"
        )
    labels = arrays[f"{split}_labels"]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DataError(
            f"{_DISPLAY[name]} source {source}: {split} labels range over [{int(labels.min())}, "
            f"{int(labels.max())}] but there are {classes} classes; the batches are damaged"
        )
    count, official = len(labels), _OFFICIAL_SIZES[split]
    if classes != expected or count != official:
        warnings.warn(
            f"{_DISPLAY[name]} source {source}: {count:,} {split} images in {classes} classes; the official "
            f"release has {official:,} in {expected} (a subset is fine; a different dataset is not)",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------- finding data


def _python_folder(name: str, folder: Path) -> Path | None:
    """The python-batch folder at ``folder`` or inside it (CIFAR-100's generic names also need ``meta``)."""
    spec = _PY_FILES[name]
    for candidate in (folder, folder / PYTHON_FOLDERS[name]):
        has_split = any((candidate / f[0]).is_file() for f in (spec.train, spec.test))
        if has_split and (name == "cifar10" or (candidate / spec.meta).is_file()):
            return candidate
    return None


def _is_tree(folder: Path) -> bool:
    for split in SPLITS:
        split_dir = folder / split
        if split_dir.is_dir() and any(p.is_dir() for p in split_dir.iterdir()):
            return True
    return False


def _find_source(name: str, root: Path) -> tuple[str, Path] | None:
    if root.is_file():
        return ("archive", root) if tarfile.is_tarfile(root) else None
    if not root.is_dir():
        return None
    folder = _python_folder(name, root)
    if folder is not None:
        return "python", folder
    if _is_tree(root):
        return "tree", root
    archives = sorted(p for p in root.iterdir() if p.is_file() and _ARCHIVE_NAME[name].match(p.name))
    if archives:
        return "archive", archives[0]
    return None


def _missing_message(name: str, root: Path | None) -> str:
    where = f"at {root}" if root is not None else "(no data root given: root=None)"
    files = ", ".join([*_PY_FILES[name].train[:1], "...", *_PY_FILES[name].test])
    return (
        f"{_DISPLAY[name]} not found {where}. Provide one of: "
        f"(1) the official python batches: a '{PYTHON_FOLDERS[name]}/' folder ({files}) as root or in it; "
        f"(2) an image-folder tree root/train/<class>/*.jpg|png and root/test/<class>/..., or a .tar/.tar.gz "
        f"archive of such a tree (root may be the archive or a folder holding e.g. '{name}_jpg.tar.gz'); "
        f"(3) download=True (CLI: --download) to fetch it with torchvision (needs internet)."
    )


def _download(name: str, root: Path | None) -> Path:
    import torchvision

    target = root if root is not None else cache_dir() / "datasets"
    if target.is_file():
        target = target.parent
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(root=str(target), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DownloadError(
            f"downloading {_DISPLAY[name]} with torchvision into {target} failed ({exc}); check the internet "
            f"connection, or place the python batches or an image-folder tree there yourself"
        ) from exc
    folder = _python_folder(name, target)
    if folder is None:
        raise MissingPathError(f"torchvision reported success but {target / PYTHON_FOLDERS[name]} is missing")
    return folder


# ---------------------------------------------------------------------------------------- python batches


def _field(batch: dict[Any, Any], key: str) -> Any:
    return batch[key.encode()] if key.encode() in batch else batch[key]


_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }
)
"""The only globals CIFAR python batches refer to (NumPy arrays, bytes); nothing else is loaded."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what the official batches contain (dicts, lists, bytes, str, numbers, NumPy arrays) and
    refuses any other global: a crafted batch file cannot run code."""

    source = "CIFAR batch"

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(
            f"{self.source} refers to {module}.{name}, which an official CIFAR python batch never contains; "
            "the file is not a CIFAR batch and may be malicious - use the official download"
        )


def _unpickle(data: bytes | Path, source: str) -> dict[Any, Any]:
    """A CIFAR python batch, read with :class:`_BatchUnpickler`; it must be a dict whose arrays hold
    integers. Its size and opcodes are bounded before it is unpickled (:mod:`fastnas.data.limits`) and its
    structure after (:func:`_check_structure`): nothing in it can take unbounded memory or time."""
    if isinstance(data, Path):
        check_file_size(data, source)
    raw = data.read_bytes() if isinstance(data, Path) else data
    check_pickle_opcodes(raw, source)
    unpickler = _BatchUnpickler(io.BytesIO(raw), encoding="bytes")
    unpickler.source = source
    try:
        batch = unpickler.load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways
        raise DataError(
            f"{source} is not a readable CIFAR python batch ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{source} is not a CIFAR python batch (a {type(batch).__name__}, not a dict)")
    _check_structure(batch, source)
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.dtype.kind not in "uib":
            raise DataError(f"{source}: entry {key!r} has dtype {value.dtype}; CIFAR batches hold integers")
    return batch


_LEAVES = (int, float, bytes, str, type(None), np.generic)
_MAX_BATCH_KEYS = 32


def _check_structure(batch: dict[Any, Any], source: str) -> None:
    """A CIFAR batch is a dict of arrays, scalars, strings and *flat* lists: anything nested deeper (a
    list in a list - a few bytes of pickle can share one list 2^40 times) is refused before NumPy walks it."""
    if len(batch) > _MAX_BATCH_KEYS:
        raise DataError(f"{source} has {len(batch):,} entries; a CIFAR python batch has at most 6")
    for key, value in batch.items():
        if not isinstance(key, (bytes, str)):
            raise DataError(f"{source} has a key of type {type(key).__name__}; a CIFAR batch's keys are text")
        if isinstance(value, np.ndarray) and value.dtype.kind == "O":
            raise DataError(f"{source}: entry {key!r} is an array of Python objects; a CIFAR batch's are not")
        if isinstance(value, (_LEAVES, np.ndarray)):
            continue
        if not isinstance(value, (list, tuple)):
            raise DataError(
                f"{source}: entry {key!r} is a {type(value).__name__}; a CIFAR python batch holds arrays, "
                "numbers, strings and flat lists - the file is not a CIFAR batch"
            )
        for item in value:
            if not isinstance(item, _LEAVES):
                raise DataError(
                    f"{source}: entry {key!r} is a {type(value).__name__} holding a {type(item).__name__}; a "
                    "CIFAR python batch holds flat lists only - the file is not a CIFAR batch"
                )


def _batches_to_arrays(
    name: str, batches: Sequence[dict[Any, Any]], sources: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    label_key = "labels" if name == "cifar10" else "fine_labels"
    images, labels = [], []
    for batch, source in zip(batches, sources, strict=True):
        try:
            data = np.asarray(_field(batch, "data"), dtype=np.uint8)
            label = np.asarray(_field(batch, label_key), dtype=np.int64)
            images.append(data.reshape(-1, 3, 32, 32))
        except KeyError as exc:
            raise DataError(f"{source} lacks the entry {exc.args[0]!r} of a CIFAR python batch") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(
                f"{source} is not a CIFAR python batch: its data or labels do not form 32x32 RGB images and "
                f"integer labels ({type(exc).__name__}: {exc})"
            ) from None
        if label.shape != (len(images[-1]),):
            raise DataError(
                f"{source} has {len(images[-1]):,} images but {label.size:,} labels; the batch is damaged"
            )
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _class_names(name: str, meta: dict[Any, Any] | None) -> list[str]:
    if meta is None:
        return list(CIFAR10_CLASSES) if name == "cifar10" else [f"class_{i:03d}" for i in range(100)]
    names = _field(meta, "label_names" if name == "cifar10" else "fine_label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_python_folder(name: str, folder: Path, split: str) -> Arrays:
    paths = [folder / f for f in _PY_FILES[name].files(split)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingPathError(f"{_DISPLAY[name]} python batches incomplete: missing {', '.join(missing)}")
    images, labels = _batches_to_arrays(name, [_unpickle(p, str(p)) for p in paths], [str(p) for p in paths])
    meta_path = folder / _PY_FILES[name].meta
    meta = _unpickle(meta_path, str(meta_path)) if meta_path.is_file() else None
    return {
        f"{split}_images": images,
        f"{split}_labels": labels,
        "classes": np.array(_class_names(name, meta)),
    }


# ---------------------------------------------------------------------------------------- image folders


@dataclass(slots=True)
class _Entry:
    """One image file of an image-folder tree: split, class, file name, its bytes or path, size and mtime."""

    split: str
    cls: str
    filename: str
    data: bytes | Path
    size: int
    stamp: int
    origin: str = ""  # for an archive member: "NAME in archive PATH"


def _image_parts(path: str) -> tuple[str, str, str] | None:
    """(split, class, file) when ``path`` looks like ``.../<split>/<class>/<file>.{jpg,png}``."""
    parts = [p for p in PurePosixPath(path).parts if p not in (".", "")]
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    if PurePosixPath(parts[-1]).suffix.lower() not in _IMAGE_SUFFIXES:
        return None
    return parts[-3], parts[-2], parts[-1]


def _check_inside(root: Path, path: Path) -> None:
    """Refuse ``path`` (a folder or file of the tree ``root``) when it is a symbolic link out of the tree:
    a dataset folder must not read files from elsewhere without a word."""
    target = path.resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(
            f"{path} is a symbolic link to {os.readlink(path)} ({target}), outside the image folder {root}; "
            "copy the file into the tree or remove the link"
        )


def _scan_tree(root: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        if split_dir.is_symlink():
            _check_inside(root, split_dir)
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if class_dir.is_symlink():
                _check_inside(root, class_dir)
            with os.scandir(class_dir) as it:
                for f in it:
                    if f.is_file() and _image_parts(f"{split}/{class_dir.name}/{f.name}") is not None:
                        if f.is_symlink():
                            _check_inside(root, Path(f.path))
                        st = f.stat()
                        entries.append(
                            _Entry(split, class_dir.name, f.name, Path(f.path), st.st_size, st.st_mtime_ns)
                        )
    return entries


def _tree_fingerprint(entries: Sequence[_Entry]) -> str:
    digest = hashlib.sha256()
    for e in sorted(entries, key=lambda e: (e.split, e.cls, e.filename)):
        digest.update(f"{e.split}/{e.cls}/{e.filename}:{e.size}:{e.stamp}\n".encode())
    return digest.hexdigest()


def _class_order(name: str, present: set[str]) -> list[str]:
    if name == "cifar10" and present == set(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return sorted(present)


def _decode_one(data: bytes | Path, where: str) -> np.ndarray:
    """The RGB pixels of one image file; an empty, truncated or corrupt file, or one of more pixels than
    :data:`~fastnas.data.limits.MAX_IMAGE_PIXELS` (read from its header, before decoding), is a DataError
    naming it."""
    try:
        with open_image(io.BytesIO(data) if isinstance(data, bytes) else data, where) as img:
            return np.asarray(to_rgb(img))  # 16-bit grayscale scaled, not clipped
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors
        if isinstance(exc, DataError):
            raise
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", str(exc))  # named above
        raise DataError(
            f"image {where} cannot be decoded ({type(exc).__name__}: {detail}); replace or remove the file"
        ) from None


def _where(e: _Entry) -> str:
    if e.origin:
        return e.origin
    return str(e.data) if isinstance(e.data, Path) else f"{e.split}/{e.cls}/{e.filename}"


def _decode_entries(name: str, entries: Sequence[_Entry]) -> Arrays:
    """Decode all images (once, with a progress bar) into per-split uint8 NCHW arrays, classes interleaved."""
    if not entries:
        raise MissingPathError(f"{_DISPLAY[name]} image folder has no .jpg/.png files under train/ or test/")
    classes = _class_order(name, {e.cls for e in entries})
    class_index = {c: i for i, c in enumerate(classes)}
    arrays: Arrays = {"classes": np.array(classes)}
    train_classes = {e.cls for e in entries if e.split == "train"}
    test_classes = {e.cls for e in entries if e.split == "test"}
    if train_classes and test_classes and train_classes != test_classes:
        only_train, only_test = sorted(train_classes - test_classes), sorted(test_classes - train_classes)
        raise DataError(
            f"the {_DISPLAY[name]} image folders of train/ and test/ have different classes (only in "
            f"train/: {only_train or 'none'}; only in test/: {only_test or 'none'}); both need the same "
            "<class>/ folders"
        )
    first = _decode_one(entries[0].data, _where(entries[0]))
    height, width = first.shape[:2]
    desc = f"decoding {_DISPLAY[name]} images (cached afterwards)"
    with tqdm(total=len(entries), desc=desc, unit="img") as bar:
        for split in SPLITS:
            chosen = [e for e in entries if e.split == split]
            if not chosen:
                continue
            chosen.sort(key=lambda e: (class_index[e.cls], e.filename))
            rank: dict[str, int] = {}
            keyed = []
            for e in chosen:  # interleave classes: k-th file of every class, then the (k+1)-th, ...
                r = rank.get(e.cls, 0)
                rank[e.cls] = r + 1
                keyed.append((r, class_index[e.cls], e))
            keyed.sort(key=lambda t: (t[0], t[1]))
            images = np.empty((len(keyed), 3, height, width), dtype=np.uint8)
            labels = np.empty(len(keyed), dtype=np.int64)
            for i, (_, label, e) in enumerate(keyed):
                pixels = _decode_one(e.data, _where(e))
                if pixels.shape != (height, width, 3):
                    raise DataError(
                        f"image {_where(e)} is {pixels.shape[1]}x{pixels.shape[0]} but the first image is "
                        f"{width}x{height}; all images of a dataset must have the same size"
                    )
                images[i] = pixels.transpose(2, 0, 1)
                labels[i] = label
                bar.update(1)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def _read_archive(name: str, path: Path) -> Arrays:
    """Read a .tar/.tar.gz sequentially: an image-folder tree inside it, or else the python batches."""
    entries: list[_Entry] = []
    pickles: dict[str, bytes] = {}
    members: dict[str, str] = {}  # python-batch file name -> its member name
    py_names = {*_PY_FILES[name].train, *_PY_FILES[name].test, _PY_FILES[name].meta}
    with (
        damaged_archive(path),
        tarfile.open(path, "r|*") as tar,
        tqdm(desc=f"reading {path.name}", unit="file") as bar,
    ):
        for member in tar:
            if not member.isfile():
                continue
            parts = _image_parts(member.name)
            posix = PurePosixPath(member.name)
            is_pickle = posix.name in py_names and (
                name == "cifar10" or posix.parent.name == PYTHON_FOLDERS[name]
            )
            if parts is None and not is_pickle:
                continue
            check_member_size(path, member)  # before reading it into memory
            handle = tar.extractfile(member)
            if handle is None:
                continue
            data = handle.read()
            if parts is not None:
                origin = f"{member.name} in archive {path}"
                entries.append(_Entry(*parts, data=data, size=member.size, stamp=0, origin=origin))
            else:
                pickles[posix.name], members[posix.name] = data, member.name
            bar.update(1)
        check_tar_end(path, tar.offset)
    if entries:
        return _decode_entries(name, entries)
    arrays: Arrays = {}
    for split in SPLITS:
        files = _PY_FILES[name].files(split)
        if all(f in pickles for f in files):
            sources = [f"{members[f]} in archive {path}" for f in files]
            batches = [_unpickle(pickles[f], where) for f, where in zip(files, sources, strict=True)]
            images, labels = _batches_to_arrays(name, batches, sources)
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    if not arrays:
        raise MissingPathError(
            f"archive {path} holds neither an image-folder tree (train/<class>/*.jpg|png) nor the "
            f"{_DISPLAY[name]} python batches ({PYTHON_FOLDERS[name]}/)"
        )
    meta = pickles.get(_PY_FILES[name].meta)
    meta_where = f"{members.get(_PY_FILES[name].meta)} in archive {path}"
    meta_batch = _unpickle(meta, meta_where) if meta is not None else None
    arrays["classes"] = np.array(_class_names(name, meta_batch))
    return arrays


# ---------------------------------------------------------------------------------------- cache


def _cached(name: str, source: Path, fingerprint: str, build: Callable[[], Arrays]) -> Arrays:
    """Arrays from the cache file of (name, source, fingerprint), else ``build()`` and write it atomically."""
    resolved = source.resolve()
    key = hashlib.sha256(f"v{_CACHE_VERSION}|{name}|{resolved}|{fingerprint}".encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name)
    path = cache_dir() / f"{name}-{stem}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable dataset cache {path} ({exc}); decoding again", stacklevel=3)
    arrays = build()
    try:
        atomic_write(path, lambda f: np.savez(f, **cast("dict[str, Any]", arrays)))  # no key is allow_pickle
    except OSError as exc:
        warnings.warn(
            f"could not write the dataset cache {path} ({exc}); set FASTNAS_CACHE_DIR to a writable folder "
            f"to avoid decoding the images again next time",
            stacklevel=3,
        )
    return arrays
