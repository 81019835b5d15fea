"""The search loop end to end on the built-in digits dataset: run directory, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastnas import Genotype, SearchConfig, load_genotype, resume_search, run_search
from fastnas.train.search import SearchRunner

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, **overrides: object) -> SearchConfig:
    values: dict[str, object] = {
        "dataset": "digits",
        "limit": 64,
        "batch_size": 16,
        "C": 4,
        "layers": 3,
        "epochs": 3,
        "seed": 7,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "run_name": "run",
    }
    values.update(overrides)
    return SearchConfig(**values)  # type: ignore[arg-type]


def _alphas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.algorithm.state_dict().items()}


def test_search_writes_a_complete_run_directory(tmp_path: Path) -> None:
    result = run_search(tiny_config(tmp_path, epochs=2), progress=False)
    run = result.run_dir
    for name in (
        "config.json",
        "metrics.jsonl",
        "alphas.jsonl",
        "checkpoint.pt",
        "genotype.json",
        "genotype.txt",
        "log.txt",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.025 and config["arch_lr"] == 3e-4 and config["C"] == 4  # resolved defaults
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # numbered from 1, as the log's "epoch 1/2"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "alpha_entropy", "genotype"):
        assert key in rows[0]
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine schedule
    genotype = load_genotype(run)
    assert genotype == result.genotype == Genotype.parse((run / "genotype.txt").read_text())
    assert Genotype.parse(rows[-1]["genotype"]) == genotype
    history = [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines()]
    assert len(history) == 2 and len(history[0]["weights"]["normal"]) == 14
    # the architecture moved away from its 1e-3 * randn initialisation
    assert history[1]["weights"]["normal"] != history[0]["weights"]["normal"]


def test_architecture_step_comes_before_weight_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original_arch, original_weight = SearchRunner.arch_step, SearchRunner.weight_step

    def arch(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append("arch")
        return original_arch(self, *a, **k)

    def weight(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append("weight")
        return original_weight(self, *a, **k)

    monkeypatch.setattr(SearchRunner, "arch_step", arch)
    monkeypatch.setattr(SearchRunner, "weight_step", weight)
    run_search(tiny_config(tmp_path, epochs=1), progress=False)
    assert calls == ["arch", "weight"] * 2


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run_search(tiny_config(tmp_path / "a"), progress=False)

    original = SearchRunner.weight_step
    count = {"n": 0}

    def crashing(self, batch):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] == 4:  # second step of the second epoch
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(SearchRunner, "weight_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_config(tmp_path / "b"), progress=False)
    monkeypatch.setattr(SearchRunner, "weight_step", original)
    run_b = tmp_path / "b" / "run"
    assert torch.load(run_b / "checkpoint.pt", weights_only=False)["epoch"] == 1  # the first epoch
    resumed = resume_search(run_b, progress=False)

    ref_alphas, res_alphas = _alphas(reference.model), _alphas(resumed.model)
    assert ref_alphas.keys() == res_alphas.keys()
    for key in ref_alphas:
        assert torch.equal(ref_alphas[key], res_alphas[key]), key
    assert resumed.genotype == reference.genotype
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    assert [r["train_loss"] for r in resumed.metrics] == [r["train_loss"] for r in reference.metrics]


def test_second_order_search_runs(tmp_path: Path) -> None:
    result = run_search(
        tiny_config(tmp_path, epochs=1, limit=64, method_options={"order": 2}), progress=False
    )
    assert result.model.algorithm.order == 2
    assert len(result.genotype.normal) == 8


def test_bf16_autocast_search_runs_on_cpu(tmp_path: Path) -> None:
    result = run_search(tiny_config(tmp_path, epochs=1, limit=64, precision="bf16"), progress=False)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.metrics)


def test_missing_dataset_error_names_the_options(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        run_search(config, progress=False)
    message = str(info.value)
    assert "nowhere" in message and "download" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_search(tiny_config(tmp_path, device="cuda"), progress=False)


def test_existing_run_directory_is_not_overwritten(tmp_path: Path) -> None:
    run_search(tiny_config(tmp_path, epochs=1, limit=32), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run_search(tiny_config(tmp_path, epochs=1, limit=32), progress=False)


def test_bad_hyper_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--train-portion must be in"):
        run_search(tiny_config(tmp_path, train_portion=1.5), progress=False)
    with pytest.raises(ValueError, match="unknown search method"):
        run_search(tiny_config(tmp_path, method="magic"), progress=False)
