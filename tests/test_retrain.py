"""Retraining end to end on tiny data (REFERENCE.md section 3): run directory, recipe defaults, schedule,
drop-path ramp, cutout, resume after a crash, evaluation-only mode, the CLI, the ImageNet folder loader."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import require_shared

from fastnas import Genotype, TrainConfig, evaluate_checkpoint, load_genotype, resume_train, run_train
from fastnas.cli import main
from fastnas.data import TensorBatchLoader, load_dataset
from fastnas.data.loader import cutout_mask
from fastnas.nn import NetworkCIFAR
from fastnas.train.retrain import TrainRunner, training_loss

FLEX = Genotype(
    normal=[[("sep_conv_3x3", 1)], [("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 2)]],
    reduce=[[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 1)], [("avg_pool_3x3", 2)]],
)


def tiny(tmp_path: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "genotype": "DARTS_V2",
        "dataset": "digits",
        "limit": 48,
        "test_limit": 40,
        "batch_size": 16,
        "C": 4,
        "layers": 3,
        "epochs": 3,
        "seed": 5,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "run_name": "run",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_recipes_fill_the_published_defaults() -> None:
    cifar = TrainConfig(genotype="DARTS_V2", dataset="cifar10").resolved()
    assert (cifar.epochs, cifar.batch_size, cifar.C, cifar.layers) == (600, 96, 36, 20)
    assert (cifar.lr, cifar.momentum, cifar.weight_decay, cifar.grad_clip) == (0.025, 0.9, 3e-4, 5.0)
    assert (cifar.auxiliary_weight, cifar.cutout, cifar.drop_path, cifar.schedule) == (0.4, 16, 0.2, "cosine")
    assert cifar.lr_min == 0.0 and cifar.label_smoothing == 0.0
    imagenet = TrainConfig(genotype="DARTS_V2", dataset="imagenet").resolved()
    assert (imagenet.epochs, imagenet.batch_size, imagenet.C, imagenet.layers) == (250, 128, 48, 14)
    assert (imagenet.lr, imagenet.weight_decay, imagenet.label_smoothing) == (0.1, 3e-5, 0.1)
    assert (imagenet.schedule, imagenet.lr_gamma, imagenet.cutout, imagenet.drop_path) == (
        "step",
        0.97,
        0,
        0.0,
    )
    assert TrainConfig(dataset="cifar10", epochs=7, drop_path=0.3).resolved().drop_path == 0.3
    with pytest.raises(ValueError, match="unknown dataset"):
        TrainConfig(dataset="mnist").resolved()


def test_run_directory_metrics_and_result(tmp_path: Path) -> None:
    result = run_train(tiny(tmp_path), progress=False)
    run = result.run_dir
    for name in ("config.json", "genotype.json", "genotype.txt", "metrics.jsonl", "checkpoint.pt", "log.txt"):
        assert (run / name).is_file(), name
    assert load_genotype(run) == load_genotype("DARTS_V2")
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.025 and config["drop_path"] == 0.2 and config["cutout"] == 4  # resolved
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # bound to its run: id, settings, genotype
    assert len(config["run_id"]) == 32 and state["config"] == config
    assert state["genotype"] == load_genotype("DARTS_V2").to_json()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["drop_path_prob"] for r in rows] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3])
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == 0.025 and lrs[0] > lrs[1] > lrs[2] > 0  # cosine to 0 over 3 epochs
    assert lrs[1] == pytest.approx(0.025 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()) / 2)
    for key in ("train_loss", "train_top1", "images_per_s", "test_top1", "test_top5"):
        assert key in rows[-1]
    saved = json.loads((run / "result.json").read_text())
    assert saved == result.result
    assert saved["num_test_images"] == 40 and 0 <= saved["test_top1"] <= saved["test_top5"] <= 100
    model = NetworkCIFAR(4, 10, 3, True, "DARTS_V2", in_channels=1)
    assert saved["parameters"] == sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n)
    assert saved["parameters_with_aux"] == sum(p.numel() for p in model.parameters())
    assert saved["flops_per_image"] > 0
    assert "img/s" in (run / "log.txt").read_text()


def test_step_schedule_decays_by_gamma(tmp_path: Path) -> None:
    result = run_train(tiny(tmp_path, epochs=3, schedule="step", lr=0.1, eval_every=0), progress=False)
    assert [r["lr"] for r in result.metrics] == pytest.approx([0.1, 0.097, 0.1 * 0.97**2])
    assert "test_top1" not in result.metrics[0] and "test_top1" in result.metrics[-1]  # only at the end


def test_loss_uses_the_auxiliary_head_with_its_weight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastnas.train.retrain as retrain

    seen: list[tuple[bool, float, float]] = []

    def spy(logits, logits_aux, target, weight, smoothing=0.0):  # type: ignore[no-untyped-def]
        seen.append((logits_aux is not None, weight, smoothing))
        return training_loss(logits, logits_aux, target, weight, smoothing)

    monkeypatch.setattr(retrain, "training_loss", spy)
    run_train(tiny(tmp_path, epochs=1, auxiliary_weight=0.7, label_smoothing=0.1), progress=False)
    assert seen and all(s == (True, 0.7, 0.1) for s in seen)


def test_a_few_steps_lower_the_loss_with_a_flexible_genotype() -> None:
    torch.manual_seed(0)
    data = load_dataset("digits")
    x = (data.images[:64].float() / 255.0 - 0.3) / 0.3
    y = data.labels[:64]
    model = NetworkCIFAR(8, 10, 3, True, FLEX, in_channels=1).train()
    model.drop_path_prob = 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = training_loss(*model(x), y, 0.4)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_flexible_genotype_trains_through_run_train(tmp_path: Path) -> None:
    result = run_train(tiny(tmp_path, genotype=FLEX, epochs=1), progress=False)
    assert load_genotype(result.run_dir) == FLEX
    assert torch.isfinite(torch.tensor(result.metrics[0]["train_loss"]))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run_train(tiny(tmp_path / "a"), progress=False)  # drop path > 0 and cutout from epoch 1

    original = TrainRunner.train_step
    count = {"n": 0}

    def crashing(self, x, y):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] == 5:  # second step of the second epoch (3 steps per epoch)
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(TrainRunner, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny(tmp_path / "b"), progress=False)
    monkeypatch.setattr(TrainRunner, "train_step", original)
    run_b = tmp_path / "b" / "run"
    assert torch.load(run_b / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (run_b / "result.json").exists()
    resumed = resume_train(run_b, progress=False)

    ref_state, res_state = _state(reference.model), _state(resumed.model)
    assert ref_state.keys() == res_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in reference.metrics]
    assert resumed.result["test_top1"] == reference.result["test_top1"]
    assert resumed.result["test_loss"] == reference.result["test_loss"]


def test_eval_only_reports_the_end_of_training_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_train(tiny(tmp_path, epochs=2, limit=64, test_limit=60), progress=False)
    evaluated = evaluate_checkpoint(result.run_dir / "checkpoint.pt", progress=False)
    for key in ("test_top1", "test_top5", "test_loss", "num_test_images"):
        assert evaluated[key] == result.result[key], key
    assert evaluated["epoch"] == 2
    assert json.loads((result.run_dir / "eval.json").read_text())["test_top1"] == result.result["test_top1"]
    capsys.readouterr()
    assert main(["train", "--eval-only", str(result.run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {result.result['test_top1']:.2f}%" in out and "top-5" in out


def test_cli_trains_from_a_search_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    search_dir = tmp_path / "search-run"
    FLEX.save_json(search_dir / "genotype.json")
    args = ["train", "--genotype", str(search_dir), "--dataset", "digits", "--limit", "32"]
    args += ["--test-limit", "20", "--epochs", "1", "--batch-size", "16", "--C", "4", "--layers", "3"]
    args += ["--device", "cpu", "--out-dir", str(tmp_path / "out"), "--run-name", "r", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test top-1" in out and "parameters" in out
    run = tmp_path / "out" / "r"
    assert load_genotype(run) == FLEX
    config = json.loads((run / "config.json").read_text())
    assert config["genotype"] == str(search_dir) and config["epochs"] == 1
    assert main(args) == 2  # the run directory exists
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # already finished: evaluates


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "digits"]) == 2
    assert "needs --genotype" in capsys.readouterr().err
    assert main(["train", "--genotype", "NOPE", "--out-dir", str(tmp_path)]) == 2
    assert "no genotype named" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--genotype",
            "DARTS_V2",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a retraining run directory" in capsys.readouterr().err
    if not torch.cuda.is_available():
        args = ["train", "--genotype", "DARTS_V2", "--dataset", "digits", "--device", "cuda"]
        assert main([*args, "--out-dir", str(tmp_path / "cuda")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # failed starts leave no run directory behind


# ----------------------------------------------------------------------------------------------- cutout


def test_cutout_zeroes_a_square_per_image_after_normalisation() -> None:
    data = load_dataset("digits")
    idx = torch.arange(200)
    common = {"augment": True, "shuffle": True, "seed": 3, "batch_size": 200}
    plain = TensorBatchLoader(data, idx, **common)
    cut = TensorBatchLoader(data, idx, cutout=4, **common)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(cut))
    assert torch.equal(y0, y1)
    changed = x0 != x1
    assert torch.all(x1[changed] == 0)  # only zeroing, same crops and flips as without cutout
    zero_area = (x1 == 0) & (x0 != 0)
    per_image = zero_area.flatten(1).sum(1)
    assert per_image.max() <= 16 and (per_image > 0).float().mean() > 0.8  # 4x4 squares, clipped at borders
    # each cut region is an axis-aligned square (rows x columns)
    mask = cutout_mask(torch.tensor([[0, 0], [4, 4], [7, 2]]), 4, 8, 8)
    assert mask.shape == (3, 1, 8, 8)
    assert mask[0].sum() == 4 and mask[1].sum() == 16 and mask[2].sum() == 3 * 4  # rows 5..7, cols 0..3
    assert mask[1, 0, 2:6, 2:6].all()
    cut.set_epoch(0)
    assert torch.equal(next(iter(cut))[0], x1)  # deterministic per (seed, epoch)
    cut.set_epoch(1)
    assert not torch.equal(next(iter(cut))[0], x1)
    no_aug = TensorBatchLoader(data, idx, cutout=4, **{**common, "augment": False})
    assert not (next(iter(no_aug))[0] == 0).flatten(1).all(1).any()


# --------------------------------------------------------------------------------------------- ImageNet

IMAGENET_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet_sample100.tar"


def test_imagenet_folder_loader_reads_the_sample_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_shared(IMAGENET_TAR)
    from fastnas.data.imagenet import FolderBatchLoader, imagenet_root, load_imagenet_folder

    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(tmp_path / "cache"))
    train = load_imagenet_folder(IMAGENET_TAR, "train")
    assert len(train) == 100 and len(train.classes) == 100
    assert all(c.startswith("n") and len(c) == 9 for c in train.classes)
    loader = FolderBatchLoader(train, 6, shuffle=True, seed=1, limit=12)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(loader) == 2 and [x.shape for x, _ in batches] == [(6, 3, 224, 224)] * 2
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist())) == 12  # a spread subset, not the first class only
    x = batches[0][0]
    assert -3 < x.mean().item() < 3 and x.std().item() > 0.3  # normalised
    torch.manual_seed(123)  # the caller's random state does not matter
    loader.set_epoch(0)
    assert torch.equal(next(iter(loader))[0], x)
    test = load_imagenet_folder(IMAGENET_TAR, "train", train_transform=False)
    assert test[0][0].shape == (3, 224, 224)
    assert torch.equal(test[0][0], test[0][0])  # resize + centre crop: no randomness
    with pytest.raises(FileNotFoundError, match="val"):
        load_imagenet_folder(IMAGENET_TAR, "test")
    assert imagenet_root(IMAGENET_TAR) == imagenet_root(IMAGENET_TAR)  # extracted once, reused


def test_imagenet_retraining_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_shared(IMAGENET_TAR)
    from fastnas.data.imagenet import imagenet_root

    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(tmp_path / "cache"))
    extracted = imagenet_root(IMAGENET_TAR)
    tree = tmp_path / "imagenet"
    tree.mkdir()
    os.symlink(extracted / "train", tree / "train")
    os.symlink(extracted / "train", tree / "val")  # the sample has no val/: reuse train/ as the test set
    config = tiny(tmp_path, dataset="imagenet", data_dir=str(tree), limit=8, test_limit=8, batch_size=4)
    config.C, config.layers, config.epochs, config.workers = 8, 3, 1, 0
    result = run_train(config, progress=False)
    assert result.result["num_classes"] == 100 and result.result["num_test_images"] == 8
    assert result.result["image_size"] == 224 and result.metrics[0]["lr"] == 0.1  # ImageNet recipe


def test_readme_retraining_commands_parse_and_reproduce_darts_v2() -> None:
    from fastnas.cli import build_parser, config_from_args

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Retraining") :]
    section = section[: section.index("\n## ", 5)]
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))
    commands = re.findall(r"^fastnas ((?:train|info) [^\n]*)", bash, re.M)
    assert len(commands) >= 5
    argvs = [shlex.split(c.replace("/path/to/", "/tmp/")) for c in commands]
    parsed = [build_parser(argv).parse_args(argv) for argv in argvs]
    trains = [a for a in parsed if a.command == "train"]
    darts = [a for a in trains if a.genotype == "DARTS_V2" and a.dataset == "cifar10"]
    assert darts, "README must show the DARTS_V2 CIFAR-10 command"
    config = config_from_args(TrainConfig, darts[0]).resolved()
    assert load_genotype(config.genotype) == load_genotype("DARTS_V2")
    published = TrainConfig(genotype="DARTS_V2", dataset="cifar10").resolved()
    for key in ("epochs", "batch_size", "C", "layers", "lr", "momentum", "weight_decay", "grad_clip"):
        assert getattr(config, key) == getattr(published, key), key
    for key in ("auxiliary_weight", "cutout", "drop_path", "schedule", "lr_min", "auxiliary"):
        assert getattr(config, key) == getattr(published, key), key
    assert config.epochs == 600 and config.limit is None
