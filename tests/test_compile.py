"""``fastnas search --compile`` and ``--cuda-graph``.

``--compile``: both levels of the search step through ``torch.compile`` (CPU inductor here) give the
losses, gradients and alphas of the eager step, and nothing recompiles after the first step of each
level although alphas and learning rates change every step. The supernet is the smallest that still
has weights and two ops per edge (one node per cell, skip_connect and avg_pool_3x3): inductor's C++
compilation of a bigger one takes minutes on two cores.

``--cuda-graph``: on a CPU (and for second order, fp16, sampling methods) a clear error; on a GPU
(``@pytest.mark.cuda``, skipped without one) the replayed run matches the eager run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from conftest import tiny_search
from torch._dynamo.utils import counters

from fastnas.algorithms import DARTS, EDAS
from fastnas.cli import main
from fastnas.errors import ConfigError, DeviceError
from fastnas.methods import get_method
from fastnas.train.compiled import CompiledLevels
from fastnas.train.cuda_graph import check_cuda_graph
from fastnas.train.search import SearchRunner, run_search
from fastnas.train.search_config import ResolvedSearchConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: one node per cell, two ops per edge: a small graph for inductor, still weights and alphas to train
TINY: dict[str, Any] = {"nodes": 1, "ops": ("skip_connect", "avg_pool_3x3")}
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def quick_inductor() -> Iterator[None]:
    """Scalar C++ kernels (no SIMD templates): the same graphs, compiled about 1.5x faster."""
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        yield


def _run_steps(tmp_path: Path, name: str, **overrides: Any) -> tuple[SearchRunner, list[dict[str, Any]]]:
    """``STEPS`` search iterations on fixed batches, with new learning rates every step; per step the
    losses, the gradients of both levels and the dynamo counters after it."""
    config = tiny_search(tmp_path, "darts", run_name=name, **TINY, **overrides).resolved()
    runner = SearchRunner(config, tmp_path / name, progress=False)
    train = next(iter(runner.weight_loader))
    val = next(iter(runner.arch_loader))
    records = []
    for step in range(STEPS):
        for group in runner.weight_optimizer.param_groups:
            group["lr"] = 0.05 / (step + 1)
        for group in runner.arch_optimizer.param_groups:
            group["lr"] = 0.01 * (step + 1)  # large enough to move the alphas visibly
        arch_loss = runner.arch_step(train, val, 0.05)
        arch_grads = [p.grad.detach().clone() for p in runner.model.arch_parameters()]
        loss, correct = runner.weight_step(train)
        weights = runner.model.weight_parameters()
        weight_grads = [p.grad.detach().clone() for p in weights if p.grad is not None]
        records.append(
            {
                "arch_loss": arch_loss,
                "loss": loss,
                "correct": correct,
                "arch_grads": arch_grads,
                "weight_grads": weight_grads,
                "frames": counters["frames"]["total"],
                "graphs": counters["stats"]["unique_graphs"],
            }
        )
    return runner, records


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("executor", ["reference", "fast"])
def test_compiled_steps_match_eager_and_never_recompile(tmp_path: Path, executor: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    compiled, got = _run_steps(tmp_path, "compiled", compile=True, supernet_options={"executor": executor})
    assert isinstance(compiled.compiled, CompiledLevels)
    eager, want = _run_steps(tmp_path, "eager", supernet_options={"executor": executor})
    assert eager.compiled is None

    # one graph per level, compiled in the first step; steps 2.. with new alphas and lrs reuse them
    seen = [(r["graphs"], r["frames"]) for r in got]
    assert seen == [(2, 2)] * STEPS, seen
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert sum(counters["recompiles"].values()) == 0
    for g, w in zip(got, want):
        _close(g["arch_loss"], w["arch_loss"])
        _close(g["loss"], w["loss"])
        assert int(g["correct"]) == int(w["correct"])
        for a, b in zip(g["arch_grads"], w["arch_grads"], strict=True):
            _close(a, b)
        assert len(g["weight_grads"]) == len(w["weight_grads"]) > 0
        for a, b in zip(g["weight_grads"], w["weight_grads"], strict=True):
            _close(a, b)
    alphas = [a.detach() for a in compiled.model.arch_parameters()]
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(alphas, [torch.zeros_like(a) for a in alphas]))
    for a, b in zip(alphas, eager.model.arch_parameters(), strict=True):
        _close(a, b.detach())
    for a, b in zip(compiled.model.weight_parameters(), eager.model.weight_parameters(), strict=True):
        _close(a.detach(), b.detach())
    # the other level's parameters were frozen only while a level ran
    assert all(p.requires_grad for p in compiled.model.weight_parameters())
    assert all(p.requires_grad for p in compiled.model.arch_parameters())


def test_search_command_with_compile_runs_an_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--dataset", "digits", "--limit", "32", "--batch-size", "16", "--C", "4"]
    argv += ["--layers", "3", "--nodes", "1", "--ops", "skip_connect,avg_pool_3x3", "--epochs", "1"]
    argv += ["--device", "cpu", "--out-dir", str(tmp_path), "--run-name", "cli", "--no-progress", "--compile"]
    assert main(argv) == 0
    assert "genotype = Genotype(normal=[" in capsys.readouterr().out
    config = ResolvedSearchConfig.load(tmp_path / "cli" / "config.json")
    assert config.compile and not config.cuda_graph


@pytest.mark.parametrize("method", ["edas", "ddsas", "entrannas", "entrannas-dst"])
def test_methods_that_choose_ops_on_the_host_are_refused(tmp_path: Path, method: str) -> None:
    options = {"method_options": {"warmup_epochs": 1}} if method == "edas" else {}  # < the 2 epochs
    with pytest.raises(ConfigError, match=f"--compile does not support {method}: it chooses the ops"):
        run_search(tiny_search(tmp_path, method, compile=True, **options), progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is written
    algorithm = get_method(method).algorithm
    with pytest.raises(ConfigError, match=f"--cuda-graph does not support {method}"):
        check_cuda_graph(torch.device("cuda"), algorithm, 1, "fp32")  # a device object: no GPU read


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_cuda_graph_on_a_cpu_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"--cuda-graph needs a CUDA device.*--device cuda"):
        run_search(tiny_search(tmp_path, "darts", cuda_graph=True), progress=False)
    argv = ["search", "--dataset", "digits", "--limit", "32", "--device", "cpu", "--cuda-graph"]
    assert main([*argv, "--out-dir", str(tmp_path), "--no-progress"]) == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(DeviceError):  # asking for CUDA on this machine is the device's error
        run_search(tiny_search(tmp_path, "darts", cuda_graph=True, device="cuda"), progress=False)


def test_cuda_graph_refuses_what_it_cannot_capture(tmp_path: Path) -> None:
    cuda = torch.device("cuda")  # a device object only: the checks read no GPU
    check_cuda_graph(cuda, DARTS, 1, "bf16")  # first order, fp32 / bf16: fine
    with pytest.raises(ConfigError, match="first-order steps only.*--order 1"):
        check_cuda_graph(cuda, DARTS, 2, "fp32")
    with pytest.raises(ConfigError, match="fp16 loss scaling.*bf16 or fp32"):
        check_cuda_graph(cuda, DARTS, 1, "fp16")
    with pytest.raises(ConfigError, match="does not support edas"):
        check_cuda_graph(cuda, EDAS, 1, "fp32")
    with pytest.raises(ConfigError, match="one process.*torchrun"):
        check_cuda_graph(cuda, DARTS, 1, "fp32", world_size=2)
    with pytest.raises(ConfigError, match="fp16 loss scaling"):  # refused when the config resolves
        tiny_search(tmp_path, "darts", cuda_graph=True, precision="fp16").resolved()


def test_config_files_of_earlier_versions_run_eager(tmp_path: Path) -> None:
    data = tiny_search(tmp_path, "darts").resolved().to_json()
    assert data["compile"] is False and data["cuda_graph"] is False
    del data["compile"], data["cuda_graph"]
    old = ResolvedSearchConfig.from_json(data)
    assert (old.compile, old.cuda_graph) == (False, False)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_the_eager_search(tmp_path: Path, precision: str) -> None:
    """Two epochs of 8 iterations: 3 eager warm-up steps, one capture, replays (the cosine schedule
    changes the learning rate in place between the epochs); alphas and weights as the eager run's."""
    results = {}
    for graphed in (False, True):
        name = "graph" if graphed else "eager"
        settings = {"limit": 256, "device": "cuda", "precision": precision, "cuda_graph": graphed}
        config = tiny_search(tmp_path, "darts", run_name=name, **settings).resolved()
        (tmp_path / name).mkdir()
        runner = SearchRunner(config, tmp_path / name, progress=False)
        assert len(runner.weight_loader) == 8
        runner.run()
        if graphed:
            assert runner.graphed is not None
            assert runner.graphed.captures == 1 and runner.graphed.replays == 2 * 8 - 3
            assert isinstance(runner.weight_optimizer.param_groups[0]["lr"], torch.Tensor)
        else:
            assert runner.graphed is None
        results[name] = runner
    eager, graph = results["eager"], results["graph"]
    tol = {"rtol": 1e-4, "atol": 1e-5} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-3}
    for a, b in zip(graph.model.arch_parameters(), eager.model.arch_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    for a, b in zip(graph.model.weight_parameters(), eager.model.weight_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    for a, b in zip(graph.model.supernet.buffers(), eager.model.supernet.buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), **tol)  # BN running statistics
    assert dataclasses.replace(graph.config, cuda_graph=False, run_name="eager") == eager.config
