"""Inputs that would exhaust the machine, and loose ends of the data and run-name checks: each is one clear
line naming the file, archive member or option, exit status 2 through the command line, and nothing written.

The malicious inputs are built here, small and fast: image headers that claim 200 megapixels, a sparse
tar whose member claims 1.5 GB, pickles of a few hundred bytes that unfold into 2^40 references.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastnas.cli import main
from fastnas.errors import ConfigError, DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
QUICK = [
    "--epochs",
    "1",
    "--C",
    "4",
    "--layers",
    "3",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--no-progress",
]
GIGA_SIZE = (20_000, 10_000)  # 200 megapixels


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("FASTNAS_MAX_IMAGE_PIXELS", "FASTNAS_MAX_MEMBER_BYTES", "FASTNAS_MAX_PICKLE_OPS"):
        monkeypatch.delenv(name, raising=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(capsys: pytest.CaptureFixture[str], command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    progress = re.compile(r"\[\d\d:\d\d|it/s]|img/s]|file/s]")  # tqdm bars
    lines = [ln for ln in err.splitlines() if ln.strip() and not progress.search(ln)]
    assert len(lines) == 1 and lines[0].startswith(f"fastnas {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_run_written(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def search(tmp_path: Path, *args: str, dataset: str = "cifar10") -> int:
    return main(["search", "--dataset", dataset, "--out-dir", str(tmp_path / "runs"), *QUICK, *args])


# ------------------------------------------------------------------------------------------ images


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def giga_png(size: tuple[int, int] = GIGA_SIZE) -> bytes:
    """A PNG of a few hundred bytes whose header says ``size`` RGB pixels (its data: rows of zeros, cut
    short - decoding it would first allocate the whole image)."""
    width, height = size
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(64 * (3 * width + 1)), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def giga_jpeg(size: tuple[int, int] = GIGA_SIZE) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to claim ``size`` pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", size[1], size[0])
    return bytes(data)


def cifar_tree(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    return root


@pytest.mark.parametrize(
    ("suffix", "make", "bound", "needle"),
    [
        (".png", giga_png, None, "has 200,000,000 pixels, more than the 64,000,000"),
        (".jpg", giga_jpeg, None, "has 200,000,000 pixels, more than the 64,000,000"),
        # 81 MP: below PIL's own bomb check, so the header is read and the size named
        (".png", lambda: giga_png((9_000, 9_000)), None, "has 81,000,000 pixels (9,000x9,000), more than"),
        # our bound raised: PIL's DecompressionBombError, reported the same way
        (".png", giga_png, "1000000000000", "has 200,000,000 pixels, more than PIL decodes"),
    ],
    ids=["png-200MP", "jpeg-200MP", "png-81MP", "pil-bomb-check"],
)
def test_an_image_bomb_in_a_cifar_tree_names_the_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
    make: Callable[[], bytes],
    bound: str | None,
    needle: str,
) -> None:
    tree = cifar_tree(tmp_path / "tree")
    bomb = tree / "train" / "cat" / f"bomb{suffix}"
    bomb.write_bytes(make())
    if bound is not None:
        monkeypatch.setenv("FASTNAS_MAX_IMAGE_PIXELS", bound)
    assert search(tmp_path, "--data-dir", str(tree)) == 2
    line = one_line_error(capsys, "search", f"image {bomb} ", needle, "replace or remove")
    assert bound is not None or "FASTNAS_MAX_IMAGE_PIXELS" in line, line
    no_run_written(tmp_path)


def test_an_image_bomb_in_a_cifar_archive_names_the_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = cifar_tree(tmp_path / "tree")
    (tree / "test" / "dog" / "bomb.png").write_bytes(giga_png())
    archive = tmp_path / "cifar10_png.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    assert search(tmp_path, "--data-dir", str(archive)) == 2
    one_line_error(capsys, "search", "test/dog/bomb.png in archive", str(archive), "200,000,000 pixels")
    no_run_written(tmp_path)


def test_an_unreadable_image_in_an_archive_names_the_member_not_a_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = cifar_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "zeros.jpg").write_bytes(bytes(4096))
    archive = tmp_path / "cifar10_jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    assert search(tmp_path, "--data-dir", str(archive)) == 2
    line = one_line_error(capsys, "search", "train/cat/zeros.jpg in archive", "cannot be decoded")
    assert "BytesIO" not in line


def test_an_image_bomb_in_an_imagenet_tree_names_the_file(tmp_path: Path) -> None:
    from fastnas.data.imagenet import FolderBatchLoader, load_imagenet_folder

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            (folder / "0.JPEG").write_bytes(_png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    bomb = tmp_path / "imagenet" / "train" / "n02" / "bomb.png"
    bomb.write_bytes(giga_png())
    archive = tmp_path / "imagenet.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "imagenet", arcname="imagenet")
    dataset = load_imagenet_folder(archive, "train")  # extracted into the cache
    loader = FolderBatchLoader(dataset, batch_size=4, shuffle=False, seed=0, workers=0)
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert "bomb.png has 200,000,000 pixels" in message and "\n" not in message, message


# ---------------------------------------------------------------------------------------- archives


def sparse_tar(path: Path, member: str, size: int, extra: Path | None = None) -> Path:
    """A complete plain tar whose last member ``member`` holds ``size`` zero bytes, written as a hole (no
    disk, no memory); ``extra`` (a folder) comes first."""
    buffer, end = io.BytesIO(), 0
    if extra is not None:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(extra, arcname=".")
            end = tar.offset  # where the members end (the end-of-archive marker follows)
    info = tarfile.TarInfo(member)
    info.size = size
    with path.open("wb") as handle:
        handle.write(buffer.getvalue()[:end])
        handle.write(info.tobuf(tarfile.PAX_FORMAT))
        handle.seek(handle.tell() + -(-size // 512) * 512)  # a hole of zeros
        handle.write(bytes(2 * 512))  # the end-of-archive marker
    return path


def zeros_tar_gz(path: Path, member: str, size: int, extra: Path) -> Path:
    """A .tar.gz with a member of ``size`` zero bytes, streamed from a file object that makes them lazily."""

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(extra, arcname=".")
        info = tarfile.TarInfo(member)
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros()))
    return path


@pytest.mark.parametrize("kind", ["sparse-tar-1.5GB", "tar.gz-zeros"])
def test_a_huge_archive_member_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    tree = cifar_tree(tmp_path / "tree", per_class=1)
    if kind == "sparse-tar-1.5GB":  # the default bound (512 MiB)
        archive = sparse_tar(tmp_path / "cifar10_jpg.tar", "./train/cat/huge.jpg", 1_500_000_000, tree)
        needle = "is 1,500,000,000 bytes"
    else:  # a real compressed stream of zeros; the bound lowered to keep the test fast
        monkeypatch.setenv("FASTNAS_MAX_MEMBER_BYTES", "1000000")
        archive = zeros_tar_gz(tmp_path / "cifar10_jpg.tar.gz", "./train/cat/huge.jpg", 3_000_000, tree)
        needle = "is 3,000,000 bytes"
    assert archive.stat().st_blocks * 512 < 5_000_000  # on disk: the zeros of a sparse tar are a hole
    assert search(tmp_path, "--data-dir", str(archive)) == 2
    one_line_error(capsys, "search", f"archive {archive}", "member './train/cat/huge.jpg'", needle,
                   "FASTNAS_MAX_MEMBER_BYTES")  # fmt: skip
    no_run_written(tmp_path)


def test_a_huge_imagenet_member_is_not_extracted(tmp_path: Path) -> None:
    from fastnas.data.imagenet import imagenet_root

    archive = sparse_tar(tmp_path / "imagenet.tar", "train/n01/huge.JPEG", 1_500_000_000)
    with pytest.raises(DataError, match=r"member 'train/n01/huge.JPEG' is 1,500,000,000 bytes"):
        imagenet_root(archive)
    assert not list((tmp_path / "cache" / "imagenet").glob("*/train/n01/huge.JPEG"))


def _imagenet_tar_with(tmp_path: Path, bad: tarfile.TarInfo) -> Path:
    archive = tmp_path / "imagenet.tar"
    image = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    with tarfile.open(archive, "w") as tar:
        for name in ("train/n01/0.png", "train/n02/0.png"):
            info = tarfile.TarInfo(name)
            info.size = len(image)
            tar.addfile(info, io.BytesIO(image))
        tar.addfile(bad, io.BytesIO(bytes(bad.size)) if bad.isfile() else None)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


@pytest.mark.parametrize(
    ("member", "needles"),
    [
        (_member("../escape.png", size=4), ["'../escape.png' (a file)", "outside the archive's folder"]),
        (_member("train/n01/l.png", tarfile.SYMTYPE, "/etc/passwd"),
         ["'train/n01/l.png' (a symbolic link to '/etc/passwd')", "absolute path"]),
        (_member("train/n01/up.png", tarfile.SYMTYPE, "../../../x"),
         ["'train/n01/up.png' (a symbolic link to '../../../x')", "outside the archive's folder"]),
        (_member("train/n01/hard.png", tarfile.LNKTYPE, "../../x"), ["(a hard link to '../../x')"]),
        (_member("train/n01/dev", tarfile.CHRTYPE), ["'train/n01/dev' (a device file)", "device file"]),
        (_member("train/n01/fifo", tarfile.FIFOTYPE), ["'train/n01/fifo' (a FIFO)"]),
    ],
    ids=["dotdot", "symlink-absolute", "symlink-outside", "hardlink", "device", "fifo"],
)  # fmt: skip
def test_an_unsafe_imagenet_member_is_named_with_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], member: tarfile.TarInfo, needles: list[str]
) -> None:
    archive = _imagenet_tar_with(tmp_path, member)
    args = ["--dataset", "imagenet", "--data-dir", str(archive), "--workers", "0", "--image-size", "32"]
    assert main(["search", "--out-dir", str(tmp_path / "runs"), *QUICK, *args]) == 2
    line = one_line_error(capsys, "search", f"archive {archive}: member ", "remove that member", *needles)
    assert "damaged" not in line
    no_run_written(tmp_path)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "cache" / "escape.png").exists()


# ----------------------------------------------------------------------------------------- pickles


def _nested_list(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node, node]  # shared: 2^depth references from a few bytes
    return node


def _nested_tuple(depth: int) -> tuple:
    node: tuple = ()
    for _ in range(depth):
        node = (node, node)  # built without MARK opcodes
    return node


def _good_batch(n: int = 10) -> dict[bytes, object]:
    return {b"data": np.zeros((n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}


def cifar_batches(folder: Path, bad: bytes | None) -> Path:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_good_batch(), protocol=2))
    if bad is not None:
        (folder / "data_batch_3").write_bytes(bad)
    return folder


@pytest.mark.parametrize(
    ("bad", "env", "needles"),
    [
        ({b"data": _nested_list(40), b"labels": [0]}, {}, ["nests containers more than 8 deep"]),
        ({b"data": _nested_tuple(40), b"labels": [0]}, {}, ["entry b'data' is a tuple holding a tuple"]),
        ({b"data": np.zeros((9, 3072), np.uint8), b"labels": {b"x": [1]}}, {}, ["entry b'labels' is a dict"]),
        ({**_good_batch(), b"filenames": [b"%d.png" % i for i in range(500)]},
         {"FASTNAS_MAX_PICKLE_OPS": "500"}, ["more than 500 pickle opcodes"]),
        (_good_batch(100), {"FASTNAS_MAX_MEMBER_BYTES": "100000"}, ["bytes, more than the 100,000"]),
        ({b"data": np.zeros((9, 3000), np.uint8), b"labels": [0] * 9}, {}, ["do not form 32x32 RGB images"]),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}, {}, ["10 images but 9 labels"]),
        ({b"labels": [0]}, {}, ["lacks the entry 'data'"]),
    ],
    ids=["nested-lists", "nested-tuples", "dict-value", "opcodes", "file-size", "shape", "label-count",
         "no-data"],
)  # fmt: skip
def test_a_malicious_or_damaged_python_batch_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bad: dict,
    env: dict,
    needles: list[str],
) -> None:
    data = pickle.dumps(bad, protocol=2)
    assert len(data) < 1_000_000
    folder = cifar_batches(tmp_path / "cifar-10-batches-py", data)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert search(tmp_path, "--data-dir", str(folder)) == 2
    one_line_error(capsys, "search", str(folder / "data_batch_3"), *needles)
    no_run_written(tmp_path)


def test_a_pickle_bomb_in_an_archive_names_archive_and_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = cifar_batches(tmp_path / "src" / "cifar-10-batches-py", pickle.dumps(
        {b"data": _nested_list(40), b"labels": [0]}, protocol=2))  # fmt: skip
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert search(tmp_path, "--data-dir", str(archive)) == 2
    one_line_error(capsys, "search", f"cifar-10-batches-py/data_batch_3 in archive {archive}", "8 deep")
    no_run_written(tmp_path)


def test_the_good_batches_still_load(tmp_path: Path) -> None:
    from fastnas.data import load_dataset

    folder = cifar_batches(tmp_path / "cifar-10-batches-py", None)
    with pytest.warns(UserWarning, match="a subset is fine"):
        data = load_dataset("cifar10", folder, "train")
    assert len(data) == 50


# -------------------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("what", ["file", "class-folder"])
def test_a_symlink_out_of_a_cifar_tree_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    tree = cifar_tree(tmp_path / "tree", per_class=1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(np.zeros((32, 32, 3), dtype=np.uint8)))
    if what == "file":
        link = tree / "train" / "cat" / "link.png"
        link.symlink_to(outside / "secret.png")
    else:
        link = tree / "train" / "cat"
        (outside / "0.png").write_bytes((link / "0.png").read_bytes())
        for f in link.iterdir():
            f.unlink()
        link.rmdir()
        link.symlink_to(outside)
    assert search(tmp_path, "--data-dir", str(tree)) == 2
    one_line_error(
        capsys, "search", f"{link} is a symbolic link to {outside}", f"outside the image folder {tree}"
    )
    no_run_written(tmp_path)


def test_a_symlink_inside_a_cifar_tree_is_fine(tmp_path: Path) -> None:
    from fastnas.data import load_dataset

    tree = cifar_tree(tmp_path / "tree", per_class=1)
    (tree / "train" / "cat" / "again.png").symlink_to(tree / "train" / "dog" / "0.png")
    with pytest.warns(UserWarning):
        assert len(load_dataset("cifar10", tree, "train")) == 11


# ------------------------------------------------------------------------------- sizes and names


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--C", "1000000000"], ["--C 1000000000, --layers 3", "weights", "memory of this machine"]),
        (["--layers", "1000000000"], ["--layers 1000000000", "modules", "memory of this machine"]),
        (["--nodes", "1000000000"], ["--nodes must be <= 64", "got 1000000000"]),
        (["--nodes", "65"], ["--nodes must be <= 64", "got 65"]),
        (["--C", str(10**400)], ["weights", "e+"]),
        (["--dataset", "imagenet", "--image-size", "40000"], ["a batch of 8 images", "2^31"]),
        (["--method", "pdarts", "--stage-layers", "5,11,1000000000"], ["stage 3 of --C 4, --layers 10000"]),
    ],
    ids=["C", "layers", "nodes-1e9", "nodes-65", "C-400-digits", "image-size", "pdarts-stage"],
)  # fmt: skip
def test_a_supernet_too_large_for_the_machine_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    if "pdarts" in args:  # stages instead of --epochs
        base = ["search", "--dataset", "digits", "--out-dir", str(tmp_path / "runs"), "--device", "cpu"]
        args = [*args, "--stage-epochs", "1,1,1", "--warmup-epochs", "0", "--no-progress"]
        assert main([*base, "--C", "4", *args]) == 2
    else:
        assert search(tmp_path, "--limit", "16", *args, dataset="digits") == 2
    one_line_error(capsys, "search", *needles)
    no_run_written(tmp_path)


@pytest.mark.parametrize(
    "args", [["--C", "1000000000"], ["--layers", "1000000000"], ["--nodes", "1000000000"]], ids=str
)
def test_info_refuses_a_supernet_too_large_to_build(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(["info", *args]) == 2
    one_line_error(capsys, "info", "memory of this machine")


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--C", "1000000000"], "--C 1000000000, --layers 3"), (["--layers", "1000000000"], "modules")],
    ids=["C", "layers"],
)
def test_train_refuses_an_evaluation_network_too_large_to_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    base = ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "1", "--device", "cpu"]
    base += ["--C", "4", "--layers", "3", "--out-dir", str(tmp_path / "runs"), "--no-progress"]
    assert main([*base, *args]) == 2
    one_line_error(capsys, "train", "the evaluation network", needle, "memory of this machine")
    no_run_written(tmp_path)


@pytest.mark.filterwarnings("ignore:DDSAS")
def test_the_size_estimate_is_a_lower_bound_of_the_real_supernets() -> None:
    from fastnas.methods import METHODS, get_method
    from fastnas.nn.sizing import estimate_space
    from fastnas.search_model import SearchModel
    from fastnas.spaces import build_space

    for method in METHODS:
        for space, layers in (("darts", 5), ("nb201", 1)):
            try:
                model = SearchModel.build(method, space=build_space(space), C=8, layers=layers)
            except ConfigError:
                continue  # the method does not search this space
            k = get_method(method).make_supernet_options().partial_k
            estimate = estimate_space(model.space, 8, layers, options=model.algorithm.options, partial_k=k)
            weights = [p.numel() for p in model.supernet.parameters()]
            assert 0 < estimate.parameters <= sum(weights) < 10 * estimate.parameters, (method, space)
            assert estimate.largest_weight <= max(weights), (method, space)
            assert estimate.modules <= sum(1 for _ in model.supernet.modules()), (method, space)


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("a" * 300, ["--run-name is 300 bytes long", "at most 255"]),
        ("é" * 200, ["--run-name is 400 bytes long"]),
        ("run\nname", ["control character '\\n' at position 3"]),
        ("run\tname", ["control character '\\t'"]),
        ("run\x1b[2Jname", ["control character '\\x1b'"]),
        ("run\u2028name", ["control character '\\u2028'"]),
    ],
    ids=["300-chars", "400-bytes", "newline", "tab", "escape", "line-separator"],
)
@pytest.mark.parametrize("command", ["search", "train"])
def test_a_bad_run_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, needles: list[str], command: str
) -> None:
    out = ["--out-dir", str(tmp_path / "runs"), "--run-name", name, "--device", "cpu", "--no-progress"]
    if command == "search":
        args = ["search", "--dataset", "digits", "--limit", "16", *out]
    else:
        args = ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--epochs", "1", *out]
    assert main(args) == 2
    one_line_error(capsys, command, *needles)
    no_run_written(tmp_path)


@pytest.mark.parametrize("where", ["cifar-data-dir", "imagenet-data-dir", "cache-dir"])
def test_a_tilde_path_of_an_unknown_user_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = "~fastnas-no-such-user/data"
    if where == "cache-dir":
        monkeypatch.setenv("FASTNAS_CACHE_DIR", path)
        args, needle = ["--data-dir", str(cifar_tree(tmp_path / "tree", per_class=1))], "FASTNAS_CACHE_DIR"
        dataset = "cifar10"
    else:
        args, needle = ["--data-dir", path, "--image-size", "32"], "--data-dir"
        dataset = "cifar10" if where == "cifar-data-dir" else "imagenet"
        if dataset == "cifar10":
            args = args[:2]
    assert search(tmp_path, *args, dataset=dataset) == 2
    one_line_error(capsys, "search", needle, repr(path), "there is no user 'fastnas-no-such-user'")
    no_run_written(tmp_path)


@pytest.mark.parametrize("command", ["search", "train"])
def test_an_out_dir_with_a_tilde_is_expanded_or_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    args = ["--dataset", "digits", "--limit", "16", "--batch-size", "8", "--epochs", "1", "--C", "4"]
    args += ["--layers", "3", "--device", "cpu", "--no-progress", "--run-name", "r"]
    if command == "train":
        args += ["--genotype", "DARTS_V2", "--test-limit", "8"]
    monkeypatch.chdir(tmp_path)
    assert main([command, *args, "--out-dir", "~fastnas-no-such-user/runs"]) == 2
    one_line_error(capsys, command, "--out-dir", "there is no user 'fastnas-no-such-user'")
    assert not any(tmp_path.iterdir())  # no folder literally named '~fastnas-no-such-user'
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main([command, *args, "--out-dir", "~/runs"]) == 0
    assert (tmp_path / "home" / "runs" / "r" / "config.json").is_file()


def _write_config(tmp_path: Path, **changes: object) -> tuple[Path, str]:
    from fastnas import SearchConfig

    config = SearchConfig(dataset="digits", limit=16, epochs=1, C=4, layers=3, batch_size=8, device="cpu",
                          out_dir=str(tmp_path / "runs"), run_name="r").resolved()  # fmt: skip
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    text = json.dumps({**config.to_json(), **changes})
    return run, text


@pytest.mark.parametrize("value", ["9" * 5000, str(10**400)], ids=["5000-digits", "400-digits"])
def test_a_huge_integer_in_config_json_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    run, text = _write_config(tmp_path, C=12345)
    (run / "config.json").write_text(text.replace("12345", value))
    assert main(["search", "--resume", str(run), "--no-progress"]) == 2
    line = one_line_error(capsys, "search", str(run / "config.json"))
    assert ("4300 digits" in line) if len(value) == 5000 else ("weights" in line), line
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing else written


def test_a_huge_integer_in_a_history_file_names_the_line(tmp_path: Path) -> None:
    from fastnas.fileio import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not valid JSON \(Exceeds the limit"):
        read_jsonl(path)


def test_the_bounds_can_be_raised_but_not_garbled(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastnas.data.limits import MAX_IMAGE_PIXELS, limit

    assert limit("MAX_IMAGE_PIXELS") == MAX_IMAGE_PIXELS
    monkeypatch.setenv("FASTNAS_MAX_IMAGE_PIXELS", "200_000_000")
    assert limit("MAX_IMAGE_PIXELS") == 200_000_000
    monkeypatch.setenv("FASTNAS_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="FASTNAS_MAX_IMAGE_PIXELS must be a positive whole number"):
        limit("MAX_IMAGE_PIXELS")
    assert os.environ["FASTNAS_MAX_IMAGE_PIXELS"] == "lots"
