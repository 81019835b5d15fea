"""``fastnas rank``: the supernet's ranking of NAS-Bench-201 cells against the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, require_shared

from fastnas import SearchConfig, run_search
from fastnas.cli import main
from fastnas.errors import CheckpointError, ConfigError
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.train.ranking import choose_archs, rank_architectures, rank_correlations

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TABLE = SHARED_DATA / "nb201.csv"


@pytest.fixture(scope="module")
def nb201_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_shared(TABLE)
    out = tmp_path_factory.mktemp("rank")
    config = SearchConfig(
        space="nb201", dataset="digits", limit=64, batch_size=16, C=4, layers=1, epochs=2,
        device="cpu", out_dir=str(out), run_name="nb",
    )  # fmt: skip
    run_search(config, progress=False)
    return out / "nb"


def write_table(path: Path, scores: dict[str, float]) -> Path:
    """A hand-built table: the given archs with the given CIFAR-10 test accuracies."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "arch_str", "c10_test_nats"])
        for index, (arch, acc) in enumerate(scores.items()):
            writer.writerow([index, arch, acc])
    return path


def test_correlations_of_perfect_reversed_and_tied_rankings() -> None:
    assert rank_correlations([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx((1.0, 1.0))
    assert rank_correlations([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx((-1.0, -1.0))
    tau, _ = rank_correlations([1, 1, 2, 3], [1, 2, 3, 4])  # tau-b with a tie
    assert 0.8 < tau < 1.0


def test_a_table_that_agrees_with_the_supernet_gives_tau_one_and_a_reversed_one_minus_one(
    nb201_run: Path, tmp_path: Path
) -> None:
    archs = choose_archs(NB201Table.load(TABLE), 6, seed=1)
    first = rank_architectures(nb201_run, TABLE, archs, progress=False, log=lambda _: None)
    assert [r["arch"] for r in first["archs"]] == [a.to_literal() for a in archs]
    assert all(0 <= r["supernet_acc"] <= 100 and r["supernet_loss"] > 0 for r in first["archs"])
    real = NB201Table.load(TABLE)
    assert [r["c10_test"] for r in first["archs"]] == [real.lookup(a).c10_test for a in archs]
    losses = {r["arch"]: r["supernet_loss"] for r in first["archs"]}
    assert len(set(losses.values())) == len(losses)  # the one-hot cells really differ
    # accuracies must be percentages: 100 - loss (the losses are a few nats) falls as the loss rises
    agreeing = write_table(tmp_path / "agree.csv", {a: 100 - loss for a, loss in losses.items()})
    result = rank_architectures(nb201_run, agreeing, archs, progress=False, log=lambda _: None)
    assert result["kendall_tau_loss"] == pytest.approx(1.0) and result["spearman_rho_loss"] == pytest.approx(
        1.0
    )
    # the same scores again: BN statistics are re-estimated from the same batches for every cell
    assert [r["supernet_loss"] for r in result["archs"]] == pytest.approx(list(losses.values()), rel=1e-6)
    reversed_table = write_table(tmp_path / "reverse.csv", dict(losses))
    result = rank_architectures(nb201_run, reversed_table, archs, progress=False, log=lambda _: None)
    assert result["kendall_tau_loss"] == pytest.approx(-1.0)
    assert json.loads((nb201_run / "rank.json").read_text())["kendall_tau_loss"] == pytest.approx(-1.0)


def test_rank_command_on_random_cells(nb201_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rank", str(nb201_run), "--nb201-table", str(TABLE), "--archs", "5", "--no-progress"])
    assert code == 0
    result = json.loads((nb201_run / "rank.json").read_text())
    assert result["num_archs"] == 5 and -1 <= result["kendall_tau"] <= 1
    assert "Kendall tau" in capsys.readouterr().out


def test_rank_refuses_other_spaces_runs_without_checkpoints_and_unknown_cells(tmp_path: Path) -> None:
    require_shared(TABLE)
    darts = SearchConfig(
        dataset="digits", limit=32, batch_size=16, C=4, layers=3, epochs=1, device="cpu",
        out_dir=str(tmp_path), run_name="darts",
    )  # fmt: skip
    run_search(darts, progress=False)
    with pytest.raises(ConfigError, match="NAS-Bench-201"):
        rank_architectures(tmp_path / "darts", TABLE, 3, progress=False)
    config = json.loads((tmp_path / "darts" / "config.json").read_text())
    config.update(space="nb201", nodes=4, layers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        rank_architectures(empty, TABLE, 3, progress=False)
    with pytest.raises(ConfigError, match="--archs"):
        choose_archs(NB201Table.load(TABLE), 1, seed=0)
    assert NB201Arch.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|") in NB201Table.load(TABLE)
