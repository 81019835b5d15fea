"""`fastnas info` and `fastnas search` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastnas.cli import main
from fastnas.nn.counting import count_flops
from fastnas.ops import build_op


def test_info_json_reports_darts_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--C", "16", "--layers", "8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weight_parameters"] == 1_930_618
    assert info["arch_parameters"] == 2 * 14 * 8
    assert info["flops_per_image"] > 0 and info["macs_per_image"] == info["flops_per_image"] // 2


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--C", "16", "--layers", "5"]) == 0
    out = capsys.readouterr().out
    assert "1,275,834" in out and "FLOPs" in out


def test_flop_counter_matches_hand_count_for_sep_conv() -> None:
    c, h = 8, 16
    op = build_op("sep_conv_3x3", c, 1, affine=False)
    # two blocks of depthwise 3x3 (9 MACs per output) and pointwise 1x1 (c MACs per output)
    macs = 2 * (c * h * h * 9 + c * h * h * c)
    assert count_flops(op, torch.randn(1, c, h, h)) == 2 * macs


def test_search_command_prints_genotype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "search",
            "--dataset",
            "digits",
            "--limit",
            "32",
            "--batch-size",
            "16",
            "--C",
            "4",
            "--layers",
            "3",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--run-name",
            "cli",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "genotype = Genotype(normal=[" in out
    assert (tmp_path / "cli" / "genotype.json").is_file()


def test_search_command_reports_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "search",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "missing"),
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err and "--download" in err


def test_resume_of_a_non_run_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "not a search run directory" in capsys.readouterr().err
