"""pytest-benchmark of one search iteration, plus checks of the harness itself.

On CPU this is a smoke test (a tiny supernet); speed is measured and reported, never asserted.
Full-size numbers come from ``python -m benchmarks.run`` (see README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import report, run
from benchmarks.step import RESULT_KEYS, build_search_step, measure_search_step

# Small enough for < 30 s for the whole file on 2 shared CPU cores; both cell types are still present.
TINY: dict[str, Any] = {"C": 4, "layers": 3, "image_size": 8}
TINY_BATCH = 4


@pytest.mark.parametrize("order", [1, 2], ids=["first_order", "second_order"])
def test_search_step(benchmark: Any, order: int) -> None:
    """One full search iteration (architecture step + weight step) on the benchmark fixture."""
    step = build_search_step(TINY_BATCH, "auto", "fp32", order=order, **TINY)
    benchmark.extra_info.update({"order": order, "batch_size": TINY_BATCH, **TINY})
    alphas_before = [a.detach().clone() for a in step.model.arch_parameters()]
    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=1)
    changed = any(
        not a.detach().equal(b) for a, b in zip(step.model.arch_parameters(), alphas_before, strict=True)
    )
    assert changed, "the architecture step did not update the architecture parameters"


def test_measure_search_step_fields() -> None:
    result = measure_search_step(TINY_BATCH, device="cpu", warmup=0, repeats=3, **TINY)
    assert set(RESULT_KEYS) <= set(result)
    assert len(result["times_ms"]) == 3 and all(t > 0 for t in result["times_ms"])
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["min_ms"] <= result["p10_ms"]
    assert result["images_per_s"] == pytest.approx(TINY_BATCH / (result["median_ms"] / 1e3))
    assert result["peak_mem_mb"] >= 0 and result["mem_measure"]
    assert result["num_threads"] >= 1 and result["device"] == "cpu" and result["device_name"]
    json.dumps(result)  # serialisable as is


def test_fp16_second_order_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16"):
        build_search_step(TINY_BATCH, "cpu", "fp16", order=2, **TINY)


def test_run_main_writes_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--C", "4", "--layers", "3", "--image-size", "8", "--batch-sizes", "4"]
    argv += ["--precision", "fp32", "fp16", "--order", "1", "--warmup", "0", "--repeats", "1"]
    assert run.main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| executor | order | precision | batch | median ms |" in table
    payload = json.loads(out.read_text(encoding="utf-8"))
    rows = payload["results"]["search_step"]
    assert [r["precision"] for r in rows] == ["fp32", "fp16"]
    assert all(r["status"] == "ok" for r in rows)
    assert payload["environment"]["num_threads"] >= 1


def test_run_main_compares_plain_and_fast_executors(tmp_path: Path) -> None:
    """The executor comparison: ``plain`` (every op forced to PyTorch) and the fast executor; on CPU the
    kernel section reports that it needs a GPU instead of timing anything."""
    out = tmp_path / "exec.json"
    argv = ["--device", "cpu", "--C", "4", "--layers", "3", "--image-size", "8", "--batch-sizes", "2"]
    argv += ["--executor", "plain", "fast", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    argv += ["--kernels", "masked_aggregate", "--only", "search_step", "kernels"]
    assert run.main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    rows = results["search_step"]
    assert [(r["executor"], r["reference_ops"]) for r in rows] == [("plain", True), ("fast", False)]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    kernel_rows = results["kernels"]
    assert {r["kernel"] for r in kernel_rows} == {"masked_aggregate"}
    assert all(r["status"] == "skipped" and "CUDA" in r["note"] for r in kernel_rows)


def test_run_main_skips_unsupported_combination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "skip.json"
    assert run.main(["--device", "cpu", "--precision", "fp16", "--order", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]["search_step"]
    assert rows[0]["status"] == "skipped" and "fp16" in rows[0]["note"]
    assert "fp16 unsupported" in capsys.readouterr().out


def test_markdown_table_escapes_pipes() -> None:
    columns = (report.Column("a", "A"), report.Column("b", "B", "{:.1f}"))
    table = report.markdown_table(columns, [{"a": "x|y", "b": 1.26}, {"a": None}])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| x\\|y | 1.3 |", "| - | - |"]


def test_run_main_times_each_pdarts_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The P-DARTS section: one row per stage, at that stage's depth and candidate count (opt-in)."""
    out = tmp_path / "pdarts.json"
    argv = [
        "--device",
        "cpu",
        "--only",
        "pdarts_stages",
        "--C",
        "4",
        "--image-size",
        "8",
        "--batch-sizes",
        "2",
    ]
    argv += ["--pdarts-layers", "3", "4", "--pdarts-ops", "8", "3", "--warmup", "0", "--repeats", "1"]
    assert run.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]["pdarts_stages"]
    assert [(r["stage"], r["layers"], r["ops_per_edge"]) for r in rows] == [(1, 3, 8), (2, 4, 3)]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["method"] == "pdarts" for r in rows)
    assert "| stage | cells | ops/edge |" in capsys.readouterr().out
    assert not run.SECTIONS["pdarts_stages"].default  # three big supernets: only with --only


def test_run_main_compares_methods_with_darts(tmp_path: Path) -> None:
    """The methods section: a sampling method's step beside DARTS for each executor, with its ratios to
    DARTS (same executor) and to the plain loop (same method) (opt-in)."""
    out = tmp_path / "methods.json"
    argv = ["--device", "cpu", "--only", "methods", "--C", "4", "--layers", "3", "--image-size", "8"]
    argv += ["--batch-sizes", "2", "--warmup", "0", "--repeats", "2", "--json", str(out)]
    argv += ["--methods", "darts", "edas", "--executor", "plain", "fast"]
    assert run.main(argv) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]["methods"]
    assert [(r["method"], r["executor"]) for r in rows] == [
        ("darts", "plain"),
        ("darts", "fast"),
        ("edas", "plain"),
        ("edas", "fast"),
    ]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    by = {(r["method"], r["executor"]): r for r in rows}
    for (method, executor), r in by.items():
        assert r["time_vs_darts"] == pytest.approx(r["median_ms"] / by["darts", executor]["median_ms"])
        assert r["time_vs_plain"] == pytest.approx(r["median_ms"] / by[method, "plain"]["median_ms"])
    assert not run.SECTIONS["methods"].default


def test_a_sampling_step_draws_a_new_subgraph_each_iteration() -> None:
    """The benchmark iteration calls the method's per-step hook, as the search loop does."""
    step = build_search_step(TINY_BATCH, "cpu", "fp32", method="edas", **TINY)
    drawn = []
    for _ in range(3):
        step()
        drawn.append(step.model.algorithm.active_set())
    assert step.step_index == 3 and all(a is not None for a in drawn)
    with pytest.raises(ValueError, match="first-order"):
        build_search_step(TINY_BATCH, "cpu", "fp32", method="ddsas", order=2, **TINY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the rows of a machine without CUDA")
def test_run_main_reports_cuda_graph_rows_unsupported_on_cpu(tmp_path: Path) -> None:
    """``--mode graph`` rows on a CPU are skipped with the reason ``--cuda-graph`` gives, not a crash."""
    out = tmp_path / "modes.json"
    argv = ["--device", "cpu", "--C", "4", "--layers", "3", "--image-size", "8", "--batch-sizes", "2"]
    argv += ["--mode", "eager", "graph", "--warmup", "0", "--repeats", "1", "--json", str(out)]
    assert run.main([*argv, "--only", "search_step"]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]["search_step"]
    assert [(r["mode"], r["status"]) for r in rows] == [("eager", "ok"), ("graph", "skipped")]
    assert "--cuda-graph needs a CUDA device" in rows[1]["note"]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build_search_step(TINY_BATCH, "cpu", "fp32", mode="graph", **TINY)
