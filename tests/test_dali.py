"""DALI input pipelines: ``DaliFolderLoader`` and ``DaliTensorLoader`` against the torch
loaders on the shared ImageNet sample and real CIFAR-10 images; sharding, epochs, partial batches and
the message when DALI is missing.

Tolerances, measured on the shared 100-image ImageNet sample (CPU decoders): in test mode DALI and
torchvision (PIL) produce the same geometry (same resized size, same crop offset), and the pixels differ
by at most one 8-bit level (max |diff| 0.0175 in normalised units = 1 / (255 * 0.225); per-image mean
|diff| at most 0.0033), from rounding in decoding and resampling. The tests allow two levels and a
per-image mean of 0.01.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT, SHARED_DATA, require_shared
from PIL import Image
from torch.utils.data import Subset

from fastnas.data.cifar import CIFAR10_CLASSES, CIFAR_STATS
from fastnas.data.dali import (
    DaliFolderLoader,
    DaliTensorLoader,
    dali_available,
    folder_file_list,
    require_dali,
)
from fastnas.data.datasets import ImageDataset
from fastnas.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, FolderBatchLoader
from fastnas.data.loader import TensorBatchLoader, epoch_generator, pad_images
from fastnas.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGENET_TAR = SHARED_DATA / "imagenet_sample100.tar"
CIFAR_TAR = SHARED_DATA / "cifar10_jpg.tar.gz"
LEVEL = 1 / (255 * min(IMAGENET_STD))  # one 8-bit level, normalised (the largest channel step)
BOUNDS_LOW = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
BOUNDS_HIGH = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


@pytest.fixture(scope="module")
def dali() -> Any:
    return pytest.importorskip(
        "nvidia.dali",
        reason="NVIDIA DALI is not installed (pip install 'fastnas[dali]'); DALI loaders untested",
    )


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory, dali: Any) -> Iterator[tuple[Any, Any]]:
    """The shared 100-image sample (one image per class, so a label names its image) as ImageFolders
    with the test and the train transforms."""
    require_shared(IMAGENET_TAR)
    from fastnas.data.imagenet import load_imagenet_folder

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTNAS_CACHE_DIR", str(tmp_path_factory.mktemp("imagenet_cache")))
        test = load_imagenet_folder(IMAGENET_TAR, "train", train_transform=False)
        train = load_imagenet_folder(IMAGENET_TAR, "train", train_transform=True)
        yield test, train


@pytest.fixture(scope="module")
def cifar(dali: Any) -> ImageDataset:
    """The first 150 images of the shared CIFAR-10 archive (real pixels and labels), as load_dataset
    would hold them (CIFAR-10 statistics, padding 4, flips), without decoding all 60,000."""
    require_shared(CIFAR_TAR)
    images, labels = [], []
    with tarfile.open(CIFAR_TAR, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            data = tar.extractfile(member)
            assert data is not None
            pixels = Image.open(io.BytesIO(data.read())).convert("RGB")
            images.append(torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8).view(32, 32, 3))
            labels.append(CIFAR10_CLASSES.index(parts[-2]))
            if len(images) == 150:
                break
    mean, std = CIFAR_STATS["cifar10"]
    return ImageDataset(
        images=torch.stack(images).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=list(CIFAR10_CLASSES),
        mean=mean,
        std=std,
        name="cifar10",
        crop_padding=4,
        hflip=True,
    )


def batches(loader: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pairs = list(loader)
    return [x for x, _ in pairs], [y for _, y in pairs]


# ------------------------------------------------------------------------------------ missing DALI


def test_missing_dali_is_a_config_error_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without DALI too: the import is made to fail."""
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.pytorch", None)
    assert not dali_available()
    expected = r'--loader dali needs NVIDIA DALI, which is not installed: pip install "fastnas\[dali\]"'
    with pytest.raises(ConfigError, match=expected) as raised:
        require_dali()
    assert "nvidia-dali-cuda130" in str(raised.value) and "--loader torch" in str(raised.value)
    with pytest.raises(ConfigError, match=expected):
        DaliFolderLoader(["a.jpg"], [0], 1, train=False, shuffle=False, seed=0)
    images = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
                          ["a"], (0.5,) * 3, (0.5,) * 3, "toy")  # fmt: skip
    with pytest.raises(ConfigError, match=expected):
        DaliTensorLoader(images, None, 1, augment=False, shuffle=False, seed=0)


def test_fastnas_imports_without_dali() -> None:
    code = (
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "import fastnas, fastnas.data, fastnas.data.dali as d\n"
        "assert not d.dali_available()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


# ---------------------------------------------------------------------------------- folder loader


def test_folder_file_list_reads_image_folders_and_subsets(imagenet: tuple[Any, Any]) -> None:
    folder = imagenet[0]
    paths, labels = folder_file_list(folder)
    assert paths == [p for p, _ in folder.samples] and labels == list(folder.targets)
    assert folder_file_list(Subset(Subset(folder, [9, 4, 7]), [2, 0])) == ([paths[7], paths[9]], [7, 9])
    with pytest.raises(ConfigError, match="ImageFolder"):
        folder_file_list(torch.utils.data.TensorDataset(torch.zeros(2)))


def test_folder_test_mode_matches_torchvision(imagenet: tuple[Any, Any]) -> None:
    """Resize(256) + CenterCrop(224): same shapes, labels and (to one 8-bit level) pixels as torchvision;
    100 images in batches of 32 end with a partial batch of 4 (no padding samples)."""
    folder = imagenet[0]
    files, labels = folder_file_list(folder)
    loader = DaliFolderLoader(files, labels, 32, train=False, shuffle=False, seed=0, workers=2)
    assert len(loader) == 4 and loader.num_examples == 100
    xs, ys = batches(loader)
    ref_x, ref_y = batches(FolderBatchLoader(folder, 32, shuffle=False, seed=0))
    assert [x.shape for x in xs] == [x.shape for x in ref_x] == [(32, 3, 224, 224)] * 3 + [(4, 3, 224, 224)]
    assert all(x.dtype == torch.float32 and x.device.type == "cpu" for x in xs)
    assert all(y.dtype == torch.int64 and y.device.type == "cpu" for y in ys)
    assert torch.cat(ys).tolist() == torch.cat(ref_y).tolist() == list(range(100))
    diff = (torch.cat(xs) - torch.cat(ref_x)).abs()
    assert diff.mean(dim=(1, 2, 3)).max() < 0.01
    assert diff.max() <= 2 * LEVEL + 1e-4


def test_folder_keeps_the_given_order_and_labels(imagenet: tuple[Any, Any]) -> None:
    """Files in a chosen order with other labels come back in that order with those labels."""
    folder = imagenet[0]
    files, _ = folder_file_list(folder)
    chosen = [41, 7, 93, 0, 58]
    labels = [1000 + i for i in chosen]
    xs, ys = batches(
        DaliFolderLoader([files[i] for i in chosen], labels, 2, train=False, shuffle=False, seed=0)
    )
    assert [len(y) for y in ys] == [2, 2, 1] and torch.cat(ys).tolist() == labels
    reference = torch.stack([folder[i][0] for i in chosen])
    assert (torch.cat(xs) - reference).abs().mean(dim=(1, 2, 3)).max() < 0.01


def test_folder_train_mode_is_plausible(imagenet: tuple[Any, Any]) -> None:
    """RandomResizedCrop + flip + colour jitter: shapes, labels, value bounds and per-channel statistics
    like torchvision's train transform (not pixel-identical: other random draws, see the loader)."""
    test, train = imagenet
    files, labels = folder_file_list(train)
    loader = DaliFolderLoader(files, labels, 32, train=True, shuffle=True, seed=1)
    xs, ys = batches(loader)
    assert [x.shape for x in xs] == [(32, 3, 224, 224)] * 3 + [(4, 3, 224, 224)]
    assert sorted(torch.cat(ys).tolist()) == list(range(100))  # shuffled, every image once
    x = torch.cat(xs)
    ref = torch.cat(batches(FolderBatchLoader(train, 50, shuffle=True, seed=1))[0])
    # normalised ImageNet pixels have mean ~0 and std ~1 per channel; over 100 random crops the two
    # pipelines differ by up to 0.19 in mean and 0.11 in std (seeds 0-3 measured)
    means, stds = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    ref_means, ref_stds = ref.mean(dim=(0, 2, 3)), ref.std(dim=(0, 2, 3))
    assert means.abs().max() < 0.4 and ref_means.abs().max() < 0.4
    assert stds.min() > 0.9 and stds.max() < 1.4 and ref_stds.min() > 0.9 and ref_stds.max() < 1.4
    assert (means - ref_means).abs().max() < 0.3 and (stds - ref_stds).abs().max() < 0.2
    low, high = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
    assert (low >= BOUNDS_LOW - 1e-4).all() and (high <= BOUNDS_HIGH + 1e-4).all()
    assert (low < BOUNDS_LOW + 0.1).all() and (high > BOUNDS_HIGH - 0.1).all()  # the full range is used
    # augmented: every image differs clearly from its plain centre crop
    centre = torch.cat(batches(FolderBatchLoader(test, 50, shuffle=False, seed=0))[0])
    assert ((x - centre[torch.cat(ys)]).abs().mean(dim=(1, 2, 3)) > 0.05).all()


@pytest.mark.parametrize("world", [2, 3])
def test_folder_shards_cover_the_epoch_once(imagenet: tuple[Any, Any], world: int) -> None:
    """Shuffled: the ranks share the epoch's permutation (the same on every rank), truncated to a
    multiple of the world size, disjointly and evenly. Not shuffled: every image exactly once."""
    files, labels = folder_file_list(imagenet[0])
    options = {"train": False, "seed": 5, "image_size": 32, "resize": 40}
    permutation = torch.randperm(100, generator=epoch_generator(5, 2)).tolist()
    seen = []
    for rank in range(world):
        loader = DaliFolderLoader(files, labels, 16, shuffle=True, shard=(rank, world), **options)
        loader.set_epoch(2)
        ys = batches(loader)[1]
        assert sum(len(y) for y in ys) == loader.num_examples == 100 // world
        assert len(ys) == len(loader)
        seen += torch.cat(ys).tolist()
    assert seen == permutation[: 100 - 100 % world]  # contiguous shares of one order
    ordered = []
    for rank in range(world):
        loader = DaliFolderLoader(files, labels, 16, shuffle=False, shard=(rank, world), **options)
        ys = batches(loader)[1]
        assert sum(len(y) for y in ys) == loader.num_examples
        ordered += torch.cat(ys).tolist()
    assert ordered == list(range(100))


def test_folder_epochs_replay_exactly_and_differ(imagenet: tuple[Any, Any]) -> None:
    files, labels = folder_file_list(imagenet[1])
    files, labels = files[:20], labels[:20]
    loader = DaliFolderLoader(files, labels, 8, train=True, shuffle=True, seed=3, image_size=64, workers=2)
    loader.set_epoch(1)
    first = batches(loader)
    loader.set_epoch(0)
    other = batches(loader)
    loader.set_epoch(1)
    again = batches(loader)
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], again[0] + again[1]))
    assert torch.cat(first[1]).tolist() != torch.cat(other[1]).tolist()
    assert sorted(torch.cat(first[1]).tolist()) == sorted(torch.cat(other[1]).tolist()) == sorted(labels)
    # channels_last: the same values (same draws) in channels-last memory format
    last = DaliFolderLoader(files, labels, 8, train=True, shuffle=True, seed=3, image_size=64,
                            channels_last=True)  # fmt: skip
    last.set_epoch(1)
    xs = batches(last)[0]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in xs)
    assert all(torch.equal(a, b) for a, b in zip(xs, first[0]))
    # drop_last: only full batches
    dropped = DaliFolderLoader(files, labels, 8, train=True, shuffle=True, seed=3, image_size=64,
                               drop_last=True)  # fmt: skip
    assert len(dropped) == 2 and [len(y) for y in batches(dropped)[1]] == [8, 8]


def test_folder_names_an_unreadable_image(imagenet: tuple[Any, Any], tmp_path: Path) -> None:
    files, _ = folder_file_list(imagenet[0])
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg" * 50)
    loader = DaliFolderLoader([*files[:3], str(bad)], [0, 1, 2, 3], 2, train=False, shuffle=False, seed=0)
    with pytest.raises(DataError, match=r"unreadable image: .*broken\.JPEG"):
        list(loader)


def test_folder_rejects_bad_options(dali: Any) -> None:
    with pytest.raises(ConfigError, match="one label per file"):
        DaliFolderLoader(["a.jpg", "b.jpg"], [0], 2, train=False, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="batch_size"):
        DaliFolderLoader(["a.jpg"], [0], 0, train=False, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="image_size <= resize"):
        DaliFolderLoader(["a.jpg"], [0], 1, train=False, shuffle=False, seed=0, image_size=300)


# ---------------------------------------------------------------------------------- tensor loader


@pytest.mark.parametrize("shard", [(0, 1), (1, 3)])
@pytest.mark.parametrize("augment", [False, True])
def test_tensor_loader_equals_tensor_batch_loader(cifar: ImageDataset, augment: bool, shard: Any) -> None:
    """Same order, crops and flips as TensorBatchLoader (the draws are its own), so the batches agree to
    float rounding; labels exactly; partial last batches included."""
    indices = torch.arange(3, 146)  # 143 images
    kwargs = {"augment": augment, "shuffle": True, "seed": 7, "shard": shard}
    loader = DaliTensorLoader(cifar, indices, 16, **kwargs)
    reference = TensorBatchLoader(cifar, indices, 16, **kwargs)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        xs, ys = batches(loader)
        ref_x, ref_y = batches(reference)
        expected = [16] * 8 + [15] if shard[1] == 1 else [16, 16, 15]  # 143, or 141 // 3 = 47 images
        assert [len(y) for y in ys] == [len(y) for y in ref_y] == expected
        assert len(loader) == len(expected) and loader.num_examples == sum(expected)
        assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x in xs)
        assert all(torch.equal(a, b) and a.dtype == torch.int64 for a, b in zip(ys, ref_y))
        assert max((a - b).abs().max().item() for a, b in zip(xs, ref_x)) < 1e-6


def test_tensor_loader_crops_are_windows_of_the_padded_image(cifar: ImageDataset) -> None:
    """Each augmented image is a 32x32 window of its zero-padded (4) image, mirrored or not; the epochs
    differ, an epoch replays exactly, and both flips and off-centre crops occur."""
    loader = DaliTensorLoader(cifar, None, 50, augment=True, shuffle=False, seed=2)
    xs, ys = batches(loader)
    assert [len(y) for y in ys] == [50, 50, 50] and torch.equal(torch.cat(ys), cifar.labels)
    x = torch.cat(xs)
    mean = torch.tensor(cifar.mean).view(3, 1, 1)
    std = torch.tensor(cifar.std).view(3, 1, 1)
    padded = pad_images(cifar.images, 4)  # [N, 3, 40, 40]
    indices = []
    for image, out in zip(padded, x):
        windows = image.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(81, 3, 32, 32)
        candidates = (torch.cat([windows, windows.flip(-1)]).float() / 255 - mean) / std  # crops, mirrored
        errors = (candidates - out).abs().amax(dim=(1, 2, 3))
        assert errors.min() < 1e-5
        indices.append(int(errors.argmin()))
    best = torch.tensor(indices)
    flipped, offset = best >= 81, best % 81
    assert 0.3 < flipped.float().mean() < 0.7 and (offset != 40).float().mean() > 0.8
    loader.set_epoch(1)
    assert not torch.equal(torch.cat(batches(loader)[0]), x)
    loader.set_epoch(0)
    assert torch.equal(torch.cat(batches(loader)[0]), x)


def test_tensor_loader_drop_last_and_shards_cover_the_epoch(cifar: ImageDataset) -> None:
    loader = DaliTensorLoader(cifar, None, 16, augment=False, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 9 and [len(y) for y in batches(loader)[1]] == [16] * 9
    seen = []
    for rank in range(3):
        shard = DaliTensorLoader(cifar, None, 16, augment=False, shuffle=False, seed=0, shard=(rank, 3))
        seen += [int(i) for y in batches(shard)[1] for i in y]
    assert sorted(seen) == sorted(cifar.labels.tolist())  # every example once (150 = 3 x 50)


# ------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dali_on_cuda(imagenet: tuple[Any, Any], cifar: ImageDataset) -> None:
    """nvJPEG decoding and GPU augmentation: outputs on the GPU, matching the CPU references."""
    loader = DaliTensorLoader(cifar, None, 32, augment=True, shuffle=True, seed=4, device="cuda")
    reference = TensorBatchLoader(cifar, None, 32, augment=True, shuffle=True, seed=4, device="cuda")
    for (x, y), (rx, ry) in zip(loader, reference):
        assert x.is_cuda and y.is_cuda and torch.equal(y, ry) and (x - rx).abs().max() < 1e-5
    folder = imagenet[0]
    files, labels = folder_file_list(folder)
    xs, ys = batches(DaliFolderLoader(files, labels, 32, train=False, shuffle=False, seed=0, device="cuda"))
    ref_x, _ = batches(FolderBatchLoader(folder, 32, shuffle=False, seed=0))
    assert all(x.is_cuda for x in xs) and torch.cat(ys).tolist() == list(range(100))
    assert (torch.cat(xs).cpu() - torch.cat(ref_x)).abs().mean(dim=(1, 2, 3)).max() < 0.02
    train = DaliFolderLoader(files, labels, 32, train=True, shuffle=True, seed=0, device="cuda",
                             channels_last=True)  # fmt: skip
    xs = batches(train)[0]
    assert all(x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) for x in xs)
