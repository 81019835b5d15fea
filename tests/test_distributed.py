"""Many processes: torch.distributed with gloo on CPU, 2 ranks started the way torchrun
starts them (``RANK``/``WORLD_SIZE``/``MASTER_*``; :mod:`distributed_worker`), and torchrun itself for
the command line. Checks: identical alphas and genotype on every rank, rank 0 alone writes the run,
2 ranks x batch b = 1 rank x batch 2b, kill and resume, host-sampling methods agree across ranks, and
the errors of bad distributed settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_search
from distributed_worker import Task, _freeze_batch_norm, free_port, run_ranks

from fastnas import SearchConfig, run_search
from fastnas.data import TensorBatchLoader, load_dataset
from fastnas.errors import ConfigError, DeviceError
from fastnas.train.distributed import Distributed, distributed_session
from fastnas.train.retrain_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 8  # per rank; the one-rank reference runs 2 x BATCH


def darts_config(tmp_path: Path, **overrides: Any) -> SearchConfig:
    """64 digits (32 per half), 2 epochs; lr scaling off so 2 x b and 1 x 2b run the same recipe."""
    values: dict[str, Any] = {"limit": 64, "batch_size": BATCH, "lr_scaling": "none", **overrides}
    return tiny_search(tmp_path, "darts", **values)  # type: ignore[no-any-return]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A 2-rank first-order DARTS search with batch-independent BatchNorm (see the equivalence test)."""
    out = tmp_path_factory.mktemp("two_ranks")
    return out, run_ranks(2, Task("search", str(out), config=darts_config(out), frozen_bn=True))


def test_every_rank_ends_with_the_same_alphas_weights_and_genotype(two_ranks: Any) -> None:
    _, (rank0, rank1) = two_ranks
    assert same(rank0["alphas"], rank1["alphas"])  # bit for bit: averaged gradients, same Adam steps
    assert all(torch.equal(rank0["weights"][k], rank1["weights"][k]) for k in rank0["weights"])
    assert rank0["genotype"] == rank1["genotype"]
    assert rank0["metrics"] == rank1["metrics"]  # the epoch totals are summed over the ranks


def test_rank_zero_alone_writes_the_run_directory(two_ranks: Any) -> None:
    out, (rank0, _) = two_ranks
    run = out / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # one row per epoch, not per rank
    assert len((run / "alphas.jsonl").read_text().splitlines()) == 2
    lines = (run / "log.txt").read_text().splitlines()
    assert sum(line.startswith("fastnas search:") for line in lines) == 1
    assert "on 2 processes (gloo)" in lines[0]
    assert sum(line.startswith("epoch 2/2") for line in lines) == 1
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == BATCH
    # every training image seen once per epoch over both ranks: 32 weight images
    assert rank0["metrics"][0]["images_per_s"] > 0
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("order", [1, 2])
def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(
    two_ranks: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: int
) -> None:
    """With BatchNorm normalising by its running statistics, a batch's loss is the mean of its examples'
    losses, so 2 ranks x b examples (sharded rank::2 from the same epoch order and augmentation draws,
    gradients averaged) must reproduce one rank x 2b up to float summation order (measured: alphas
    within 5e-10, weights within 1e-8 after 2 epochs). With batch statistics the BN terms differ between
    b and 2b and the runs drift apart (alphas ~1e-3, the size of their changes), which is the expected
    behaviour of DDP without SyncBatchNorm, not a fault."""
    if order == 1:
        _, (rank0, _) = two_ranks
    else:
        out = tmp_path / "two"
        out.mkdir()
        config = darts_config(out, method_options={"order": 2}, epochs=1)
        rank0, rank1 = run_ranks(2, Task("search", str(out), config=config, frozen_bn=True))
        assert same(rank0["alphas"], rank1["alphas"])
    with monkeypatch.context() as patch:
        from torch.nn.modules.batchnorm import _BatchNorm

        patch.setattr(_BatchNorm, "forward", _BatchNorm.forward)  # restored after the block
        _freeze_batch_norm()
        one = tmp_path / "one"
        overrides: dict[str, Any] = {"batch_size": 2 * BATCH}
        if order == 2:
            overrides.update(method_options={"order": 2}, epochs=1)
        single = run_search(darts_config(one, **overrides), progress=False)
    alphas = [a.detach() for a in single.model.arch_parameters()]
    moved = max(float((a - b).abs().max()) for a, b in zip(alphas, rank0["alphas"], strict=True))
    assert moved < 1e-7, moved
    weights = single.model.supernet.state_dict()
    worst = max(float((weights[k].float() - v.float()).abs().max()) for k, v in rank0["weights"].items())
    assert worst < 1e-6, worst
    # and the runs did learn something: the alphas moved well beyond the tolerance
    assert max(float(a.abs().max()) for a in alphas) > 1e-3


def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_result(two_ranks: Any, tmp_path: Path) -> None:
    _, (rank0, _) = two_ranks
    config = darts_config(tmp_path)
    stopped = run_ranks(2, Task("search", str(tmp_path), config=config, frozen_bn=True, interrupt_at=1))
    assert all(r == {"interrupted": True} for r in stopped)
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").is_file() and not (run / "genotype.json").exists()
    resumed = run_ranks(2, Task("resume", str(tmp_path), run_dir=str(run), frozen_bn=True))
    for rank in resumed:
        assert same(rank["alphas"], rank0["alphas"])
        assert rank["genotype"] == rank0["genotype"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert "resuming" in (run / "log.txt").read_text()


@pytest.mark.parametrize("method", ["edas", "ddsas", "pdarts"])
def test_methods_that_choose_on_the_host_choose_the_same_on_every_rank(tmp_path: Path, method: str) -> None:
    """EDAS and DDSAS sample sub-graphs on the host and P-DARTS prunes candidates between stages: every
    rank must draw the same (the run's seed), or the averaged gradients would mix different graphs.
    The runner also compares the alphas of all ranks after every epoch and stops on a difference."""
    options: dict[str, Any] = {
        "edas": {"method_options": {"warmup_epochs": 1}},
        "ddsas": {"method_options": {"subspace_ops": 20, "resample_every": 1}},
        "pdarts": {
            "method_options": {
                "stage_epochs": (1, 1),
                "stage_layers": (3, 4),
                "keep_ops": (4, 1),
                "skip_dropout": (0.1, 0.4),
                "warmup_epochs": 0,
            },
            "layers": None,
            "epochs": None,
        },
    }[method]
    config = tiny_search(tmp_path, method, batch_size=8, limit=32, **options)
    rank0, rank1 = run_ranks(2, Task("search", str(tmp_path), config=config))
    assert same(rank0["alphas"], rank1["alphas"])
    assert rank0["genotype"] == rank1["genotype"]
    run = tmp_path / "run"
    if method == "pdarts":
        stages = json.loads((run / "stages.json").read_text())
        assert [s["stage"] for s in stages] == [1, 2]  # written once, by rank 0
    elif method == "ddsas":
        rows = (run / "sampling.jsonl").read_text().splitlines()
        assert rows and len(set(rows)) == len(rows)  # each resample recorded once, by rank 0


def test_torchrun_retrains_with_ddp_and_reports_once(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m fastnas train``: DDP keeps the ranks' weights identical, the
    test accuracy is summed over both shards of the test set, and only rank 0 prints and writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(free_port()), "-m", "fastnas", "train", "--genotype", "DARTS_V2", "--dataset", "digits",
        "--limit", "48", "--test-limit", "40", "--batch-size", "8", "--C", "4", "--layers", "3",
        "--epochs", "2", "--device", "cpu", "--out-dir", str(tmp_path), "--run-name", "run", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1
    run = tmp_path / "run"
    result = json.loads((run / "result.json").read_text())
    assert result["world_size"] == 2 and result["num_test_images"] == 40  # both shards, every image once
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == pytest.approx(2 * TrainConfig(dataset="digits").resolved().lr)  # linear scaling


# ------------------------------------------------------------------- in-process: loaders and errors


def test_shards_of_an_epoch_are_the_big_batch_split_between_the_ranks() -> None:
    """Rank r takes positions r, r + W, ... of the epoch's order with that position's augmentation, so
    the k-th batches of W ranks together are the k-th batch of one rank with a W times larger batch."""
    data = load_dataset("digits", None, split="train")
    indices = torch.arange(60)
    whole = TensorBatchLoader(data, indices, 12, augment=True, shuffle=True, seed=7)
    parts = [
        TensorBatchLoader(data, indices, 4, augment=True, shuffle=True, seed=7, shard=(r, 3))
        for r in range(3)
    ]
    for loader in (whole, *parts):
        loader.set_epoch(3)
    assert [len(p) for p in parts] == [5, 5, 5] and [p.num_examples for p in parts] == [20, 20, 20]
    for (x, y), *shards in zip(whole, *parts, strict=True):
        xs = torch.stack([s[0] for s in shards], 1).reshape(x.shape)  # interleave rank 0, 1, 2, 0, ...
        ys = torch.stack([s[1] for s in shards], 1).reshape(y.shape)
        assert torch.equal(xs, x) and torch.equal(ys, y)


def test_uneven_epochs_drop_the_same_tail_on_every_rank_but_evaluation_keeps_every_image() -> None:
    data = load_dataset("digits", None, split="train")
    indices = torch.arange(11)
    train = [
        TensorBatchLoader(data, indices, 4, augment=True, shuffle=True, seed=1, shard=(r, 2)) for r in (0, 1)
    ]
    assert [t.num_examples for t in train] == [5, 5] and len(train[0]) == len(train[1])  # same steps
    test = [
        TensorBatchLoader(data, indices, 4, augment=False, shuffle=False, seed=1, shard=(r, 2))
        for r in (0, 1)
    ]
    assert sum(t.num_examples for t in test) == 11
    labels = torch.cat([y for t in test for _, y in t])
    assert sorted(labels.tolist()) == sorted(data.labels[indices].tolist())


def test_global_batch_size_must_divide_by_the_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not divide by the world size 3"):
        SearchConfig(dataset="digits", global_batch_size=64).resolved()
    assert SearchConfig(dataset="digits", global_batch_size=96).resolved().batch_size == 32
    with pytest.raises(ConfigError, match="not both"):
        SearchConfig(dataset="digits", global_batch_size=96, batch_size=8).resolved()
    with pytest.raises(ConfigError, match="does not divide"):
        TrainConfig(dataset="digits", global_batch_size=100).resolved()


def test_lr_scaling_is_linear_in_the_world_size_and_off_for_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published = SearchConfig(dataset="cifar10").resolved()
    monkeypatch.setenv("WORLD_SIZE", "4")
    linear = SearchConfig(dataset="cifar10").resolved()
    assert linear.lr == pytest.approx(4 * published.lr) and linear.lr_min == pytest.approx(
        4 * published.lr_min
    )
    assert linear.arch_lr == published.arch_lr and linear.batch_size == published.batch_size  # per process
    assert SearchConfig(dataset="cifar10", lr_scaling="none").resolved().lr == published.lr
    assert linear.world_size == 4 and published.world_size == 1


def test_dali_loader_without_dali_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_dali(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    for name in [m for m in sys.modules if m.startswith("nvidia")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=r'pip install "fastnas\[dali\]"'):
        run_search(tiny_search(tmp_path, "darts", loader="dali"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _torchrun_env(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", **extra}.items():
        monkeypatch.setenv(name, value)


def test_an_unavailable_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with pytest.raises(DeviceError, match="'nccl' is not available"), distributed_session("cpu", "nccl"):
        pass
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    with pytest.raises(DeviceError, match="'gloo' is not available"), distributed_session("cpu", "auto"):
        pass
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    with pytest.raises(ConfigError, match="nccl needs CUDA"), distributed_session("cpu", "nccl"):
        pass


def test_many_processes_without_torchrun_or_with_one_gpu_named_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _torchrun_env(monkeypatch)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"), distributed_session("cpu"):
        pass
    with pytest.raises(ConfigError, match="--device cuda"):
        Distributed(rank=0, world_size=2).device_for("cuda:1")
    assert Distributed(rank=1, world_size=2, local_rank=1).device_for("cuda") == "cuda:1"
    assert Distributed().device_for("cuda:1") == "cuda:1"  # one process: as given


def test_a_run_resumes_only_on_the_world_size_it_was_configured_for(tmp_path: Path) -> None:
    from fastnas.train.search import resume_search

    run_search(tiny_search(tmp_path, "darts", epochs=1), progress=False)
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["world_size"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="configured for 2 process"):
        resume_search(tmp_path / "run", progress=False)


def test_sync_batch_norm_on_cpu_processes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastnas.train.retrain import TrainRunner

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig(
        genotype="DARTS_V2", dataset="digits", device="cpu", sync_bn=True, out_dir=str(tmp_path), run_name="r"
    ).resolved()
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        TrainRunner(config, config.load_genotype(), tmp_path / "r", dist=Distributed(rank=0, world_size=2))


def test_config_json_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    """Runs written before --loader / --lr-scaling / --tensorboard existed resume with the values they
    ran with (one process, the torch loader, no events)."""
    from fastnas.train.retrain_config import ResolvedTrainConfig
    from fastnas.train.scaling import ADDED_KEYS
    from fastnas.train.search_config import ResolvedSearchConfig

    search = SearchConfig(dataset="digits").resolved().to_json()
    train = TrainConfig(dataset="digits").resolved().to_json()
    for data in (search, train):
        for key in ADDED_KEYS:
            data.pop(key, None)
    old = ResolvedSearchConfig.from_json(search)
    assert (old.world_size, old.loader, old.tensorboard) == (1, "torch", False)
    assert ResolvedTrainConfig.from_json(train).sync_bn is False
    del search["lr"]  # a key that was always there is still required
    with pytest.raises(ConfigError, match="lacks the key"):
        ResolvedSearchConfig.from_json(search)


def test_a_dali_search_ends_where_the_torch_loader_search_does(tmp_path: Path) -> None:
    """DALI's CIFAR pipeline replays the torch loader's draws (order, crops, flips), so the same search on
    either loader ends with the same architecture (float32 rounding of the normalisation aside)."""
    pytest.importorskip("nvidia.dali", reason="the [dali] extra is not installed")
    torch_run = run_search(tiny_search(tmp_path / "t", "darts"), progress=False)
    dali_run = run_search(tiny_search(tmp_path / "d", "darts", loader="dali"), progress=False)
    for a, b in zip(torch_run.model.arch_parameters(), dali_run.model.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch_run.genotype == dali_run.genotype
