"""Architecture search directly on ImageNet: per-class subsets, the ImageNet search
network, published defaults, and a search whose genotype retrains as an ImageNet network."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DATA, require_shared

from fastnas import SearchConfig, run_search
from fastnas.cli import main
from fastnas.data.imagenet import class_subsets
from fastnas.errors import ConfigError, DataError
from fastnas.genotype import load_genotype
from fastnas.nn import NetworkImageNet
from fastnas.train.retrain import TrainConfig, run_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGENET_TAR = SHARED_DATA / "imagenet_sample100.tar"


# ---------------------------------------------------------------------------------- class subsets


def test_class_subsets_take_their_share_of_every_class_and_never_overlap() -> None:
    targets = [0] * 40 + [1] * 80 + [2] * 120
    weights, arch = class_subsets(targets, (0.1, 0.025), seed=3)
    per_class = [Counter(targets[i] for i in part) for part in (weights, arch)]
    assert per_class[0] == {0: 4, 1: 8, 2: 12}  # 10% of 40 / 80 / 120, exactly
    assert per_class[1] == {0: 1, 1: 2, 2: 3}  # 2.5%
    assert not set(weights) & set(arch)
    assert weights == sorted(weights) and class_subsets(targets, (0.1, 0.025), seed=3) == [weights, arch]
    assert class_subsets(targets, (0.1, 0.025), seed=4) != [weights, arch]  # another seed, other images


def test_class_subsets_round_a_fraction_of_an_image_at_random() -> None:
    """A class of one image lands in a subset with that subset's probability (so tiny trees still work)."""
    targets = list(range(2000))  # one image per class
    weights, arch = class_subsets(targets, (0.5, 0.25), seed=0)
    assert not set(weights) & set(arch)
    assert abs(len(weights) / 2000 - 0.5) < 0.05 and abs(len(arch) / 2000 - 0.25) < 0.05
    with pytest.raises(ConfigError, match="add up to more than 1"):
        class_subsets(targets, (0.8, 0.3), seed=0)


# ------------------------------------------------------------------------------------- defaults


def test_imagenet_search_defaults_are_the_published_ones() -> None:
    pc = SearchConfig(method="pc-darts", dataset="imagenet").resolved()
    assert (pc.batch_size, pc.lr, pc.arch_lr, pc.epochs, pc.supernet.partial_k) == (1024, 0.5, 6e-3, 50, 4)
    assert pc.options.arch_start_epoch == 35  # type: ignore[attr-defined]
    assert (pc.subset_weights, pc.subset_arch, pc.image_size) == (0.1, 0.025, 224)
    cifar = SearchConfig(method="pc-darts", dataset="cifar10").resolved()
    assert (cifar.batch_size, cifar.lr, cifar.options.arch_start_epoch) == (256, 0.1, 15)  # type: ignore[attr-defined]
    assert (cifar.subset_weights, cifar.subset_arch, cifar.image_size) == (0, 0, 0)  # not used
    ent = SearchConfig(method="entrannas", dataset="imagenet").resolved()
    assert (ent.batch_size, ent.lr, ent.arch_lr) == (1024, 0.5, 6e-3)  # REFERENCE.md section 6
    dst = SearchConfig(method="entrannas-dst", dataset="imagenet").resolved().options
    assert (dst.tau0, dst.tau_decay) == (1.0, 0.9)  # type: ignore[attr-defined]
    given = SearchConfig(method="pc-darts", dataset="imagenet", batch_size=128, lr=0.0625).resolved()
    assert (given.batch_size, given.lr) == (128, 0.0625)  # a user's values win (linear scaling: 0.5 / 8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"subset_weights": 0.0}, r"--subset-weights must be a share of each class in \(0, 1\], got 0.0"),
        ({"subset_arch": 1.5}, r"--subset-arch must be a share of each class in \(0, 1\], got 1.5"),
        ({"subset_weights": 0.9, "subset_arch": 0.2}, "add up to more than 1"),
        ({"image_size": 16}, "--image-size must be >= 32"),
        ({"workers": -1}, "--workers must be >= 0"),
        ({"space": "nb201"}, "use --space darts"),
    ],
)
def test_bad_imagenet_settings_are_clear_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchConfig(method="pc-darts", dataset="imagenet", **overrides).resolved()


def test_imagenet_settings_on_another_dataset_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--subset-weights applies to --dataset imagenet only"):
        SearchConfig(dataset="cifar10", subset_weights=0.1).resolved()
    assert main(["search", "--dataset", "digits", "--subset-arch", "0.1", "--no-progress"]) == 2
    assert "applies to --dataset imagenet only" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shared 100-image sample, extracted once, with its train/ also serving as val/."""
    require_shared(IMAGENET_TAR)
    from fastnas.data.imagenet import imagenet_root

    folder = tmp_path_factory.mktemp("imagenet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTNAS_CACHE_DIR", str(folder / "cache"))
        extracted = imagenet_root(IMAGENET_TAR)
        tree = folder / "tree"
        tree.mkdir()
        os.symlink(extracted / "train", tree / "train")
        os.symlink(extracted / "train", tree / "val")  # the sample has no val/ (for the retraining)
        yield tree


def imagenet_search(tree: Path, out: Path, **overrides: Any) -> SearchConfig:
    values: dict[str, Any] = {
        "method": "pc-darts",
        "dataset": "imagenet",
        "data_dir": str(tree),
        "subset_weights": 0.2,
        "subset_arch": 0.1,
        "image_size": 32,
        "workers": 0,
        "C": 4,
        "layers": 3,
        "epochs": 1,
        "batch_size": 8,
        "method_options": {"arch_start_epoch": 0},
        "seed": 1,
        "device": "cpu",
        "out_dir": str(out),
        "run_name": "run",
    }
    values.update(overrides)
    return SearchConfig(**values)


def test_a_tiny_imagenet_search_writes_a_genotype_that_builds_and_retrains(
    imagenet_tree: Path, tmp_path: Path
) -> None:
    result = run_search(imagenet_search(imagenet_tree, tmp_path), progress=False)
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["images_per_s"] > 0 and metrics[0]["data_wait_s"] >= 0
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["subset_weights"]) == ("imagenet", 0.2)
    assert config["supernet_options"]["partial_k"] == 4
    supernet = result.model.supernet
    assert supernet.stem_kind == "imagenet"  # three stride-2 convs before the cells
    assert supernet.classifier.out_features == 100
    genotype = load_genotype(str(run))
    assert genotype == result.genotype
    network = NetworkImageNet(8, 100, 3, False, genotype).eval()
    assert network(torch.randn(1, 3, 224, 224))[0].shape == (1, 100)
    train = TrainConfig(
        genotype=str(run), dataset="imagenet", data_dir=str(imagenet_tree), limit=4, test_limit=4
    )
    train.C, train.layers, train.epochs, train.workers, train.batch_size = 8, 3, 1, 0, 4
    train.device, train.out_dir, train.run_name = "cpu", str(tmp_path), "retrain"
    retrained = run_train(train, progress=False)
    assert retrained.result["num_classes"] == 100 and retrained.result["image_size"] == 224


def test_the_search_network_sees_28_pixels_at_224(imagenet_tree: Path) -> None:
    """PC-DARTS' ImageNet search network: 224 -> 28 through the stems, then the cells."""
    from fastnas import SearchModel

    model = SearchModel.build("pc-darts", C=4, layers=3, num_classes=100, stem="imagenet")
    sizes = []
    model.supernet.cells[0].register_forward_hook(lambda _m, args, _o: sizes.append(args[1].shape[-1]))
    model(torch.randn(1, 3, 224, 224))
    assert sizes == [28]


def test_an_imagenet_folder_without_class_folders_is_a_clear_error(tmp_path: Path) -> None:
    tree = tmp_path / "flat"
    (tree / "train").mkdir(parents=True)
    (tree / "train" / "a.JPEG").write_bytes(b"not a class folder")
    with pytest.raises(DataError, match="class"):
        run_search(imagenet_search(tree, tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "run" / "checkpoint.pt").exists()


def test_dali_loader_feeds_the_imagenet_search_and_retraining(imagenet_tree: Path, tmp_path: Path) -> None:
    """``--loader dali``: the same search and retraining run on DALI pipelines (CPU here)."""
    pytest.importorskip("nvidia.dali", reason="the [dali] extra is not installed")
    from fastnas.data.dali import DaliFolderLoader
    from fastnas.train.search import SearchRunner

    config = imagenet_search(imagenet_tree, tmp_path, loader="dali", workers=1)
    runner = SearchRunner(config.resolved(), tmp_path / "unused", progress=False)
    assert isinstance(runner.weight_loader, DaliFolderLoader)
    assert isinstance(runner.eval_loader, DaliFolderLoader)
    result = run_search(config, progress=False)
    assert result.metrics[0]["images_per_s"] > 0
    from fastnas.train.retrain import run_train
    from fastnas.train.retrain_config import TrainConfig

    train = TrainConfig(
        genotype=str(tmp_path / "run"), dataset="imagenet", data_dir=str(imagenet_tree), limit=16,
        test_limit=8, epochs=1, batch_size=8, C=4, layers=3, workers=1, device="cpu", loader="dali",
        out_dir=str(tmp_path), run_name="train",
    )  # fmt: skip
    outcome = run_train(train, progress=False)
    assert outcome.result["num_test_images"] == 8
