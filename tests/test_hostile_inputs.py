"""Broken data and options, met through the command line as a user meets them: each is one clear line on
stderr naming the file or the option and what to do, before the first epoch, and nothing is written."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastnas.algorithms import derive_darts
from fastnas.cli import main
from fastnas.errors import DataError, NonFiniteError
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread is faster


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def cifar_tree(root: Path, classes: tuple[str, ...] = CIFAR10_CLASSES, per_class: int = 2) -> Path:
    """A tiny CIFAR-10 image-folder tree: 32x32 PNGs, ``per_class`` per class and split."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    return root


def search(tmp_path: Path, data: Path, *extra: str) -> int:
    args = ["search", "--dataset", "cifar10", "--data-dir", str(data), "--out-dir", str(tmp_path / "runs")]
    return main([*args, *QUICK, *extra])


def one_line_error(capsys: pytest.CaptureFixture[str], command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    progress = re.compile(r"\[\d\d:\d\d")  # a tqdm bar shows its elapsed time
    lines = [ln for ln in err.splitlines() if ln.strip() and not progress.search(ln)]
    assert len(lines) == 1 and lines[0].startswith(f"fastnas {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_run_written(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


# ------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xd8\xff\xe0 not really a jpeg", "truncated"],
    ids=["empty", "corrupt", "truncated"],
)
def test_an_unreadable_image_in_a_folder_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str
) -> None:
    tree = cifar_tree(tmp_path / "tree")
    bad = tree / "train" / "cat" / "bad.jpg"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 99, dtype=np.uint8)).save(buffer, format="JPEG")
        content = buffer.getvalue()[:200]
    assert isinstance(content, bytes)
    bad.write_bytes(content)
    assert search(tmp_path, tree) == 2
    one_line_error(capsys, "search", str(bad), "cannot be decoded", "replace or remove")
    no_run_written(tmp_path)


def test_an_unreadable_image_in_an_archive_names_the_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = cifar_tree(tmp_path / "tree")
    (tree / "test" / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    archive = tmp_path / "cifar10_jpg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    assert search(tmp_path, archive) == 2
    one_line_error(capsys, "search", "test/dog/bad.png", "cannot be decoded")


# ---------------------------------------------------------------------------------------- archives


def _tar_bytes(tree: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        tar.add(tree, arcname=".")
    return buffer.getvalue()


def test_a_truncated_tar_gz_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tar_bytes(cifar_tree(tmp_path / "tree"), "w:gz")
    archive = tmp_path / "cifar10_jpg.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    assert search(tmp_path, archive) == 2
    one_line_error(capsys, "search", str(archive), "truncated or damaged")
    no_run_written(tmp_path)


def test_a_plain_tar_cut_at_a_member_boundary_is_not_read_as_a_smaller_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tarfile stops silently at a member boundary; the missing end-of-archive marker gives it away."""
    tree = cifar_tree(tmp_path / "tree")
    data = _tar_bytes(tree, "w")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        files = [m for m in members if m.isfile()]
        cut_after = files[len(files) // 2]
        end = cut_after.offset_data + ((cut_after.size + 511) // 512) * 512  # member boundary
    archive = tmp_path / "cifar10_jpg.tar"
    archive.write_bytes(data[:end])
    with tarfile.open(archive, "r|") as tar:  # the premise: tarfile itself reports nothing
        assert 0 < sum(m.isfile() for m in tar) < len(files)
    assert search(tmp_path, archive) == 2
    one_line_error(capsys, "search", str(archive), "truncated", "end-of-archive")
    archive.write_bytes(data)  # the complete archive is fine
    assert search(tmp_path, archive, "--run-name", "ok") == 0


# ----------------------------------------------------------------------------------- class checks


@pytest.mark.parametrize("classes", [("cat",), (*CIFAR10_CLASSES, "dragon")], ids=["1-class", "11-classes"])
def test_a_class_count_cifar10_cannot_have_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: tuple[str, ...]
) -> None:
    tree = cifar_tree(tmp_path / "tree", classes=classes, per_class=1)
    assert search(tmp_path, tree) == 2
    one_line_error(capsys, "search", f"{len(classes)} class(es)", "CIFAR-10 has 10")
    no_run_written(tmp_path)


def test_train_and_test_with_different_classes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = cifar_tree(tmp_path / "tree", per_class=1)
    (tree / "test" / "truck").rename(tree / "test" / "lorry")
    assert search(tmp_path, tree) == 2
    one_line_error(capsys, "search", "different classes", "'truck'", "'lorry'")


def test_a_subset_of_the_classes_is_accepted_with_a_warning(tmp_path: Path) -> None:
    tree = cifar_tree(tmp_path / "tree", classes=CIFAR10_CLASSES[:4], per_class=2)
    with pytest.warns(
        UserWarning, match=r"8 train images in 4 classes; the official release has 50,000 in 10"
    ):
        assert search(tmp_path, tree) == 0


# ------------------------------------------------------------------------------------ NB201 table


def test_an_incomplete_nb201_table_fails_before_the_first_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "part.csv"
    table.write_text(
        "index,arch_str,c10_test_nats\n"
        "0,|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10.0\n"
        "1,|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,11.0\n"
    )
    args = ["search", "--space", "nb201", "--dataset", "digits", "--nb201-table", str(table)]
    args += [
        "--out-dir",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--C",
        "4",
        "--layers",
        "1",
        "--no-progress",
    ]
    assert main(args) == 2
    one_line_error(capsys, "search", str(table), "lacks 15,623 of the 15,625 cells")
    no_run_written(tmp_path)


def test_a_table_that_is_not_a_table_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "junk.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    args = ["search", "--space", "nb201", "--dataset", "digits", "--out-dir", str(tmp_path / "runs")]
    assert main([*args, "--nb201-table", str(binary)]) == 2
    one_line_error(capsys, "search", str(binary))


def test_a_fake_official_pth_table_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    fake.write_bytes(b"not a benchmark")

    class BrokenAPI:
        def __init__(self, path: str, verbose: bool = False) -> None:
            raise EOFError("Ran out of input")  # what torch.load says of such a file

    monkeypatch.setitem(sys.modules, "nas_201_api", types.SimpleNamespace(NASBench201API=BrokenAPI))
    args = ["search", "--space", "nb201", "--dataset", "digits", "--out-dir", str(tmp_path / "runs")]
    assert main([*args, "--nb201-table", str(fake)]) == 2
    one_line_error(capsys, "search", str(fake), "not a NAS-Bench-201 benchmark file")


# ----------------------------------------------------------------------------------- output folder


def test_an_out_dir_that_names_a_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine\n")
    args = ["search", "--dataset", "digits", "--out-dir", str(a_file), *QUICK]
    assert main(args) == 2
    one_line_error(capsys, "search", str(a_file), "is a file, not a folder")
    assert a_file.read_text() == "mine\n"


def test_an_out_dir_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = __import__("os").access
    monkeypatch.setattr(
        "fastnas.train.run_state.os.access",
        lambda p, mode: False if Path(p) == read_only else real_access(p, mode),
    )
    for command in ("search", "train"):
        args = [command, "--dataset", "digits", "--out-dir", str(read_only / "runs"), *QUICK]
        if command == "train":
            args += ["--genotype", "DARTS_V2"]
        assert main(args) == 2
        one_line_error(capsys, command, str(read_only), "not writable")
    assert not any(read_only.iterdir())


# ------------------------------------------------------------------------ options that did the wrong thing


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--lr", "nan", "--lr must be a finite number"),
        ("--lr", "inf", "--lr must be a finite number"),
        ("--weight-decay", "1e30", "--weight-decay must be in [0, 1]"),
        ("--grad-clip", "-1", "--grad-clip must be >= 0"),
        ("--arch-lr", "-0.1", "--arch-lr must be in (0, 10]"),
        ("--momentum", "1.5", "--momentum must be in [0, 1)"),
    ],
)
def test_bad_numbers_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, needle: str
) -> None:
    code = None
    try:
        code = main(
            ["search", "--dataset", "digits", "--out-dir", str(tmp_path / "runs"), *QUICK, option, value]
        )
    except SystemExit as exc:  # argparse refuses a non-finite float itself
        code = exc.code
    assert code == 2
    assert needle in capsys.readouterr().err
    no_run_written(tmp_path)


def test_grad_clip_zero_means_no_clipping_in_search_and_retraining(tmp_path: Path) -> None:
    """0 = off in both loops (it used to zero every weight gradient in search): the weights move."""
    for command in ("search", "train"):
        args = [command, "--dataset", "digits", "--limit", "32", "--out-dir", str(tmp_path), *QUICK]
        args += ["--grad-clip", "0", "--run-name", command]
        if command == "train":
            args += ["--genotype", "DARTS_V2"]
        assert main(args) == 0
        config = (tmp_path / command / "config.json").read_text()
        assert '"grad_clip": 0.0' in config
    # a clip to norm 0 would have zeroed every gradient, hence every momentum buffer
    for command, key in (("search", "weight_optimizer"), ("train", "optimizer")):
        state = torch.load(tmp_path / command / "checkpoint.pt", weights_only=True)[key]["state"]
        buffers = [s["momentum_buffer"] for s in state.values()]
        assert buffers and sum(float(b.abs().sum()) for b in buffers) > 0, command


def test_a_retraining_without_a_single_step_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--genotype",
        "DARTS_V2",
        "--dataset",
        "digits",
        "--limit",
        "1",
        "--out-dir",
        str(tmp_path),
    ]
    assert main([*args, *QUICK]) == 2
    one_line_error(capsys, "train", "no training step", "--limit")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- diverged weights


def test_non_finite_architecture_weights_derive_no_genotype() -> None:
    space = DartsSpace()
    weights = {t: torch.softmax(torch.randn(14, 8), -1) for t in space.cell_types}
    weights["reduce"][3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"reduce cell are not finite \(edge 3"):
        derive_darts(weights, space)


def test_entrannas_dst_under_nan_reports_the_nan_not_an_empty_node() -> None:
    torch.manual_seed(0)
    model = SearchModel.build("entrannas-dst", C=4, layers=3, num_classes=3)
    with torch.no_grad():
        model.algorithm.alphas["normal"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="normal cell are not finite"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(NonFiniteError, match="not finite"):
        model.genotype()


def test_an_unreadable_imagenet_image_names_the_file(tmp_path: Path) -> None:
    from fastnas.data.imagenet import FolderBatchLoader, load_imagenet_folder

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i}.JPEG").write_bytes(_png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    bad = tmp_path / "imagenet" / "train" / "n02" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    dataset = load_imagenet_folder(tmp_path / "imagenet", "train")
    for workers in (0, 1):
        loader = FolderBatchLoader(dataset, batch_size=5, shuffle=False, seed=0, workers=workers)
        with pytest.raises(DataError) as info:
            list(loader)
        assert str(bad) in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_full_disk_stops_the_run_naming_the_file_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from fastnas.train.checkpoint import verify_checkpoint

    real_write = os.write

    def full_after_epoch_one(fd: int, data: bytes) -> int:  # history lines and log lines go through here
        if b'"epoch": 2' in data:  # the second epoch's history row
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("fastnas.fileio.os.write", full_after_epoch_one)
    args = ["search", "--dataset", "digits", "--limit", "32", "--out-dir", str(tmp_path), "--run-name", "r"]
    args += [*QUICK, "--epochs", "2"]
    assert main(args) == 2
    one_line_error(capsys, "search", "no space left to write", "metrics.jsonl", "bytes needed", "resume")
    run = tmp_path / "r"
    assert verify_checkpoint(run / "checkpoint.pt")  # epoch 1's checkpoint is intact
    monkeypatch.undo()
    assert main(["search", "--resume", str(run), "--no-progress"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
