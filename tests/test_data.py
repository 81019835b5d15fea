"""Tests for fastnas.data: dataset loading (digits, CIFAR sources, cache) and the tensor batch loader."""

from __future__ import annotations

import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, require_shared
from PIL import Image

from fastnas.data import (
    DATASET_NAMES,
    ImageDataset,
    TensorBatchLoader,
    limit_indices,
    load_dataset,
    search_split,
)
from fastnas.data import cifar as cifar_mod
from fastnas.data.loader import crop_flip, pad_images, random_crop_flip
from fastnas.errors import DataError

CIFAR10_ORDER = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(folder))
    return folder


# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_settings() -> None:
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    assert train.images.shape == (1497, 1, 8, 8) and test.images.shape == (300, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.num_classes == 10 and train.in_channels == 1 and train.image_size == 8
    assert set(train.labels.tolist()) == set(range(10)) and set(test.labels.tolist()) == set(range(10))
    assert train.crop_padding == 1 and train.hflip is False
    scaled = train.images.double() / 255.0
    assert train.mean == pytest.approx([scaled.mean().item()], rel=1e-9)
    assert train.std == pytest.approx([scaled.std(unbiased=False).item()], rel=1e-9)
    assert test.mean == train.mean  # statistics always come from the train split


def test_digits_split_is_deterministic_partition() -> None:
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits", "/ignored", "test"), load_dataset("digits", None, "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    train = load_dataset("digits", None, "train")
    ours = torch.cat([train.images, a.images]).reshape(-1, 64).numpy().astype(np.int64)
    ref = np.rint(load_digits().images.reshape(-1, 64) * 255 / 16).astype(np.int64)
    assert sorted(map(tuple, ours)) == sorted(map(tuple, ref))  # train + test is exactly the full set


def test_digits_are_real_images_nearest_class_mean() -> None:
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    x, xt = train.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == test.labels).float().mean().item() > 0.7


# ---------------------------------------------------------------------------------------------- api


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="cifar10, cifar100, digits"):
        load_dataset("mnist", None)
    with pytest.raises(ValueError, match="valid splits"):
        load_dataset("digits", None, split="valid")
    assert DATASET_NAMES == ("cifar10", "cifar100", "digits")


def test_search_split() -> None:
    w, a = search_split(11, 0.5)
    assert w.tolist() == list(range(5)) and a.tolist() == list(range(5, 11))
    w, a = search_split(50000)
    assert len(w) == 25000 and len(a) == 25000 and w.dtype == torch.int64
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            search_split(10, bad)
    with pytest.raises(ValueError, match="empty"):
        search_split(1, 0.5)


def test_image_dataset_validation_and_subset() -> None:
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    ds = ImageDataset(images, torch.arange(6) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3, "toy", 2, True)
    sub = ds.subset(torch.tensor([4, 1]))
    assert torch.equal(sub.images, images[[4, 1]]) and sub.labels.tolist() == [0, 1]
    assert sub.crop_padding == 2 and sub.hflip and sub.classes == ["a", "b"] and len(sub) == 2
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), torch.arange(6), ["a"], (0.5,) * 3, (0.2,) * 3, "toy")
    with pytest.raises(ValueError, match="one value per channel"):
        ImageDataset(images, torch.arange(6), ["a"], (0.5,), (0.2,), "toy")


# ---------------------------------------------------------------------------------------------- CIFAR sources


def test_missing_cifar_names_the_three_options(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", missing)
    msg = str(err.value)
    assert str(missing) in msg and "python batches" in msg and "image-folder" in msg and "download" in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", None)


def _write_tree(root: Path, seed: int = 0) -> dict[str, dict[str, list[tuple[str, np.ndarray]]]]:
    """A small image-folder tree with random 6x5 RGB/greyscale PNGs; returns what was written."""
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {}
    for split, per_class in (("train", 3), ("test", 2)):
        written[split] = {}
        for cls in ("dog", "airplane", "cat"):  # created out of order on purpose
            folder = root / split / cls
            folder.mkdir(parents=True)
            items = []
            for i in range(per_class):
                name = f"{i:04d}.png"
                if cls == "cat" and i == 0:  # greyscale file: decoded to 3 equal channels
                    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
                    Image.fromarray(grey, mode="L").save(folder / name)
                    pixels = np.repeat(grey[:, :, None], 3, axis=2)
                else:
                    pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / name)
                items.append((name, pixels))
            written[split][cls] = items
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return written


def _expected(written: dict[str, dict[str, list[tuple[str, np.ndarray]]]], split: str):
    """Class order sorted; examples interleaved: file k of every class, then file k+1, ..."""
    classes = sorted(written[split])
    images, labels = [], []
    for k in range(max(len(v) for v in written[split].values())):
        for label, cls in enumerate(classes):
            if k < len(written[split][cls]):
                images.append(written[split][cls][k][1].transpose(2, 0, 1))
                labels.append(label)
    return np.stack(images), labels, classes


def test_image_folder_tree_exact_pixels_and_cache(tmp_path: Path, cache: Path, monkeypatch) -> None:
    root = tmp_path / "tree"
    written = _write_tree(root)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", root, split)
        images, labels, classes = _expected(written, split)
        assert ds.classes == classes == ["airplane", "cat", "dog"]
        assert torch.equal(ds.images, torch.from_numpy(images)) and ds.labels.tolist() == labels
        assert ds.mean == pytest.approx((0.49139968, 0.48215827, 0.44653124)) and ds.crop_padding == 4
        assert ds.hflip and ds.name == "cifar10"
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    with monkeypatch.context() as m:  # second load must come from the cache file
        m.setattr(cifar_mod, "_decode_one", fail)
        again = load_dataset("cifar10", root, "train")
    assert torch.equal(again.images, torch.from_numpy(_expected(written, "train")[0]))

    # changing a file (size and mtime) invalidates the cache key
    new_pixels = np.full((6, 5, 3), 7, dtype=np.uint8)
    Image.fromarray(new_pixels).save(root / "train" / "airplane" / "0000.png", compress_level=0)
    changed = load_dataset("cifar10", root, "train")
    assert torch.equal(changed.images[0], torch.from_numpy(new_pixels.transpose(2, 0, 1)))
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob(".*tmp"))


def test_image_folder_archive_and_folder_holding_it(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "tree"
    written = _write_tree(tree, seed=1)
    holder = tmp_path / "holder"
    holder.mkdir()
    archive = holder / "cifar10_small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10_small")  # the tree sits under a top-level folder
    (holder / "cifar100_other.tar.gz").write_bytes(b"not picked for cifar10")
    for root in (archive, holder):
        for split in ("train", "test"):
            ds = load_dataset("cifar10", root, split)
            images, labels, classes = _expected(written, split)
            assert ds.classes == classes
            assert torch.equal(ds.images, torch.from_numpy(images)) and ds.labels.tolist() == labels


def test_image_size_mismatch_is_reported(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "tree"
    _write_tree(root)
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(root / "test" / "cat" / "9999.png")
    with pytest.raises(ValueError, match="same size"):
        load_dataset("cifar10", root, "test")


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10_batches(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        _pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                b"filenames": [f"{i}.png".encode() for i in range(4)]})  # fmt: skip
        out[name] = (data, labels)
    _pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_ORDER],
                                      b"num_vis": 3072, b"num_cases_per_batch": 4})  # fmt: skip
    return out


def test_cifar10_python_batches(tmp_path: Path, cache: Path) -> None:
    written = _write_cifar10_batches(tmp_path / "cifar-10-batches-py", np.random.default_rng(3))
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        ds = load_dataset("cifar10", root, "train")
        assert ds.images.shape == (20, 3, 32, 32) and ds.classes == CIFAR10_ORDER
        assert torch.equal(ds.images, torch.from_numpy(train_data.reshape(20, 3, 32, 32)))
        assert ds.labels.tolist() == train_labels
        # row-major CHW: the first 1024 bytes of a row are the red plane
        assert torch.equal(ds.images[0, 0].flatten(), torch.from_numpy(train_data[0, :1024]))
    test = load_dataset("cifar10", tmp_path, "test")
    assert test.labels.tolist() == written["test_batch"][1]
    assert not list(cache.glob("*.npz"))  # python batches need no decode cache


class _TouchOnLoad:
    """Unpickling this object calls ``Path.touch(marker)``: what a malicious batch file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_cifar_batches_that_would_run_code_are_refused(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_batches(folder, np.random.default_rng(5))
    marker = tmp_path / "payload-ran"
    batch = {
        b"labels": [0, 1, 2, 3],
        b"data": np.zeros((4, 3072), dtype=np.uint8),
        b"x": _TouchOnLoad(marker),
    }
    _pickle(folder / "data_batch_3", batch)
    with pytest.raises(DataError, match=r"data_batch_3 refers to .*may be malicious"):
        load_dataset("cifar10", tmp_path, "train")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match="may be malicious"):
        load_dataset("cifar10", archive, "train")
    assert not marker.exists()  # nothing ran
    # the same file through the plain pickle module would have run the payload
    with (folder / "data_batch_3").open("rb") as f:
        pickle.load(f, encoding="bytes")
    assert marker.exists()


def test_cifar_batches_that_are_not_batches_are_clear_errors(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_batches(folder, np.random.default_rng(6))
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR python batch"):
        load_dataset("cifar10", tmp_path, "train")
    _pickle(folder / "data_batch_2", [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not a dict"):
        load_dataset("cifar10", tmp_path, "train")
    _pickle(folder / "data_batch_2", {b"labels": [0], b"data": np.zeros((1, 3072), dtype=np.float32)})
    with pytest.raises(DataError, match="dtype float32"):
        load_dataset("cifar10", tmp_path, "train")


def test_cifar100_python_batches_and_archive(tmp_path: Path, cache: Path) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"name{i:03d}" for i in range(100)]
    data = {s: rng.integers(0, 256, (n, 3072), dtype=np.uint8) for s, n in (("train", 6), ("test", 3))}
    fine = {s: rng.integers(0, 100, len(data[s])).tolist() for s in data}
    for s in data:
        _pickle(folder / s, {b"data": data[s], b"fine_labels": fine[s], b"coarse_labels": [0] * len(fine[s])})
    _pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names]})
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    for root in (tmp_path, archive):
        ds = load_dataset("cifar100", root, "test")
        assert ds.classes == fine_names and ds.labels.tolist() == fine["test"]
        assert torch.equal(ds.images, torch.from_numpy(data["test"].reshape(3, 3, 32, 32)))
        assert ds.mean == pytest.approx((0.5071, 0.4865, 0.4409))


def test_download_uses_torchvision(tmp_path: Path, cache: Path, monkeypatch) -> None:
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            _write_cifar10_batches(Path(root) / "cifar-10-batches-py", np.random.default_rng(5))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    target = tmp_path / "dl"
    ds = load_dataset("cifar10", target, "test", download=True)
    assert calls == [(str(target), True, True)] and ds.images.shape == (4, 3, 32, 32)
    load_dataset("cifar10", target, "train", download=True)  # already there: no second download
    assert len(calls) == 1

    class Offline:
        def __init__(self, **kwargs) -> None:
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(RuntimeError, match="network unreachable"):
        load_dataset("cifar10", tmp_path / "dl2", download=True)


@pytest.fixture(scope="module")
def shared_cifar10(tmp_path_factory: pytest.TempPathFactory):
    require_shared(SHARED_DATA / "cifar10_jpg.tar.gz")
    with pytest.MonkeyPatch.context() as m:
        cache_folder = tmp_path_factory.mktemp("cifar_cache")
        m.setenv("FASTNAS_CACHE_DIR", str(cache_folder))
        start = time.perf_counter()
        train = load_dataset("cifar10", SHARED_DATA, "train")
        first = time.perf_counter() - start
        start = time.perf_counter()
        test = load_dataset("cifar10", SHARED_DATA / "cifar10_jpg.tar.gz", "test")
        second = time.perf_counter() - start
        yield train, test, cache_folder, first, second


@pytest.mark.slow  # decoding 60,000 JPEGs takes ~15-30 s on 2 busy cores
def test_shared_cifar10_archive(shared_cifar10) -> None:
    train, test, cache_folder, first, second = shared_cifar10
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.classes == CIFAR10_ORDER == test.classes
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    means = (train.images.sum(dim=(0, 2, 3), dtype=torch.int64) / (255 * 50000 * 32 * 32)).tolist()
    assert means == pytest.approx([0.4913, 0.4821, 0.4465], abs=0.005)
    # interleaved order: the weight half of the DARTS split is class balanced
    weights, _ = search_split(len(train))
    assert torch.bincount(train.labels[weights]).tolist() == [2500] * 10
    assert len(list(cache_folder.glob("cifar10-*.npz"))) == 1
    assert second < 5.0 and second < first / 3, (first, second)


# ---------------------------------------------------------------------------------------------- loader


def _toy(n: int = 10, hw: int = 6, pad: int = 2, hflip: bool = True, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 3, hw, hw), dtype=torch.uint8, generator=g)
    return ImageDataset(
        images,
        torch.arange(n),
        [f"c{i}" for i in range(n)],
        (0.4, 0.5, 0.6),
        (0.2, 0.25, 0.3),
        "toy",
        pad,
        hflip,
    )


def _epoch(loader: TensorBatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_shapes_normalisation_and_subset() -> None:
    ds = _toy()
    idx = torch.tensor([7, 2, 5, 0, 9])
    loader = TensorBatchLoader(ds, idx, 2, augment=False, shuffle=False, seed=0)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [2, 2, 1]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (5, 3, 6, 6) and y.dtype == torch.int64
    assert y.tolist() == idx.tolist()
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    expected = (ds.images[idx].float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)


def test_loader_len_and_drop_last_cover_every_example_once() -> None:
    ds = _toy(n=10)
    loader = TensorBatchLoader(ds, None, 4, augment=True, shuffle=True, seed=1)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == list(range(10))
    dropped = TensorBatchLoader(ds, None, 4, augment=True, shuffle=True, seed=1, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert len(TensorBatchLoader(ds, None, 5, augment=False, shuffle=False, seed=0, drop_last=True)) == 2
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatchLoader(ds, None, 0, augment=False, shuffle=False, seed=0)
    with pytest.raises(IndexError, match="indices"):
        TensorBatchLoader(ds, torch.tensor([3, 10]), 2, augment=False, shuffle=False, seed=0)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def test_loader_determinism_per_seed_and_epoch() -> None:
    ds = _toy(n=32)

    def make(seed: int) -> TensorBatchLoader:
        return TensorBatchLoader(ds, None, 8, augment=True, shuffle=True, seed=seed)

    a, b = make(5), make(5)
    assert _same(_epoch(a, 0), _epoch(b, 0))
    assert _same(_epoch(a, 0), _epoch(a, 0))  # replaying an epoch gives the same batches
    assert not _same(_epoch(a, 0), _epoch(a, 1))
    assert not _same(_epoch(a, 1), _epoch(make(6), 1))
    history = [_epoch(a, e) for e in range(3)]
    assert not _same(history[1], history[2])
    assert _same(_epoch(a, 3), _epoch(make(5), 3))  # fresh loader, jumped straight to epoch 3


def test_crop_with_offset_equal_padding_keeps_content_and_flip_mirrors() -> None:
    images = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    pad = 3
    centred = torch.full((5, 2), pad)
    assert torch.equal(random_crop_flip(images, centred, None, pad), images)
    assert torch.equal(
        random_crop_flip(images, centred, torch.ones(5, dtype=torch.bool), pad), images.flip(-1)
    )
    mixed = torch.tensor([True, False, True, False, False])
    out = random_crop_flip(images, centred, mixed, pad)
    assert torch.equal(out[mixed], images[mixed].flip(-1)) and torch.equal(out[~mixed], images[~mixed])
    shifted = random_crop_flip(images, torch.zeros(5, 2, dtype=torch.int64), None, pad)
    assert torch.equal(shifted[:, :, pad:, pad:], images[:, :, :-pad, :-pad])
    assert int(shifted[:, :, :pad].abs().sum()) == 0 and int(shifted[:, :, :, :pad].abs().sum()) == 0
    corner = random_crop_flip(images, torch.tensor([[2 * pad, 1]] * 5), None, pad)  # rows +pad, cols -2
    assert torch.equal(corner[:, :, : 7 - pad, 2:], images[:, :, pad:, : 9 - 2])


@pytest.mark.parametrize("hflip", [True, False])
def test_loader_augmentation_is_a_crop_and_flip_of_the_source(hflip: bool) -> None:
    pad = 2
    ds = _toy(n=24, hw=6, pad=pad, hflip=hflip)
    loader = TensorBatchLoader(ds, None, 8, augment=True, shuffle=True, seed=3)
    plain = TensorBatchLoader(ds, None, 24, augment=False, shuffle=False, seed=0)
    ((reference, _),) = list(plain)
    padded = pad_images(ds.images, pad)
    seen_offsets, seen_flips = set(), set()
    for x, y in _epoch(loader, 2):
        for xi, yi in zip(x, y, strict=True):
            matches = []
            for dy in range(2 * pad + 1):
                for dx in range(2 * pad + 1):
                    for flip in (False, True) if hflip else (False,):
                        crop = crop_flip(
                            padded, yi.view(1), torch.tensor([[dy, dx]]), torch.tensor([flip]), 6, 6
                        )
                        candidate = crop.float().mul_(loader._scale).add_(loader._shift)[0]
                        if torch.equal(candidate, xi):
                            matches.append((dy, dx, flip))
            assert matches, "augmented sample is not a padded crop (and flip) of its source image"
            seen_offsets.add(matches[0][:2])
            seen_flips.add(matches[0][2])
        assert not torch.equal(x, reference[y])  # augmentation changed something
    assert len(seen_offsets) > 5
    assert seen_flips == ({False, True} if hflip else {False})


def test_digits_loader_end_to_end() -> None:
    train = load_dataset("digits", None, "train")
    w, a = search_split(len(train))
    loader = TensorBatchLoader(train, limit_indices(w, 100), 32, augment=True, shuffle=True, seed=0)
    assert len(loader) == 4
    x, y = next(iter(loader))
    assert x.shape == (32, 1, 8, 8) and set(y.tolist()) <= set(range(10))
    assert limit_indices(a, None) is a and limit_indices(a, 3).tolist() == a[:3].tolist()
    with pytest.raises(ValueError, match="limit"):
        limit_indices(a, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loader_on_cuda_matches_cpu() -> None:
    ds = _toy(n=40, hw=8, pad=2)
    cpu = TensorBatchLoader(ds, None, 16, augment=True, shuffle=True, seed=9)
    gpu = TensorBatchLoader(ds, None, 16, augment=True, shuffle=True, seed=9, device="cuda")
    assert gpu._images.is_cuda
    for (xc, yc), (xg, yg) in zip(_epoch(cpu, 4), _epoch(gpu, 4), strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
