"""``fastnas plot`` pictures, the sweep's curves and ``--tensorboard`` events. The
pictures were looked at when written; here each file must exist and be a valid PNG of its size."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_DATA, interrupt_search_at, require_shared, tiny_search
from PIL import Image

from fastnas import run_search
from fastnas.cli import main
from fastnas.errors import ConfigError, DataError
from fastnas.train.plots import DPI, plot_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TABLE = SHARED_DATA / "nb201.csv"


def assert_png(path: Path, inches: tuple[float, float]) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(inches[0] * DPI), round(inches[1] * DPI)), path.name


def test_a_ddsas_run_gets_every_picture_it_has_data_for(tmp_path: Path) -> None:
    options = {"subspace_ops": 20, "resample_every": 1}
    run_search(tiny_search(tmp_path, "ddsas", batch_size=8, epochs=3, method_options=options), progress=False)
    written = plot_run(tmp_path / "run")
    expected = {
        "curves": (10, 4),
        "alphas_epoch1": (10, 6),
        "alphas_epoch2": (10, 6),
        "alphas_epoch3": (10, 6),
        "alpha_curves": (12, 4),
        "skips": (5, 4),
        "ddsas_sampling": (10, 6),
        "cell_normal": (11, 5),
        "cell_reduce": (11, 5),
    }
    assert set(written) == set(expected)
    for name, inches in expected.items():
        assert written[name] == tmp_path / "run" / "plots" / f"{name}.png"
        assert_png(written[name], inches)


def test_pdarts_stages_and_the_nb201_cell_and_accuracy(tmp_path: Path) -> None:
    require_shared(TABLE)
    options = {"stage_epochs": (1, 1), "stage_layers": (3, 4), "keep_ops": (4, 1), "skip_dropout": (0.1, 0.4)}
    pdarts = tiny_search(
        tmp_path / "p", "pdarts", method_options={**options, "warmup_epochs": 0}, layers=None, epochs=None
    )
    run_search(pdarts, progress=False)
    written = plot_run(tmp_path / "p" / "run", epochs=[2])
    assert_png(written["stages"], (6, 4))
    assert "alphas_epoch2" in written and "alphas_epoch1" not in written
    nb = tiny_search(tmp_path / "n", "darts", space="nb201", layers=1, nb201_table=str(TABLE))
    run_search(nb, progress=False)
    written = plot_run(tmp_path / "n" / "run")
    assert_png(written["skips"], (10, 4))  # skip count and the table's accuracy side by side
    assert_png(written["cell_cell"], (11, 5))
    assert main(["plot", str(tmp_path / "n" / "run")]) == 0


def test_plot_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no search metrics"):
        plot_run(tmp_path / "empty")
    run_search(tiny_search(tmp_path, "darts", epochs=1), progress=False)
    with pytest.raises(ConfigError, match="epochs 1-1"):
        plot_run(tmp_path / "run", epochs=[5])
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"fastnas\[viz\]"):
        plot_run(tmp_path / "run")


def test_a_sweep_draws_all_its_runs_on_one_figure(tmp_path: Path) -> None:
    from fastnas.train.sweep import run_sweep

    base = tiny_search(tmp_path, "darts", epochs=1)
    result = run_sweep(base, ["darts"], [0, 1], tmp_path / "sweep")
    assert result["plot"] == str(tmp_path / "sweep" / "sweep_curves.png")
    assert_png(Path(result["plot"]), (10, 4))


def _events(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_tensorboard_events_of_a_search_survive_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastnas.train.search import resume_search

    config = tiny_search(tmp_path, "darts", epochs=3, tensorboard=True)
    interrupt_search_at(monkeypatch, 2, config)  # epochs 1 and 2 logged, then killed
    resume_search(tmp_path / "run", progress=False)
    events = _events(tmp_path / "run")
    tags = events.Tags()
    assert {
        "loss/train",
        "loss/validation",
        "accuracy/validation",
        "lr",
        "architecture/entropy_normal",
    } <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2, 3]
    assert {"edge_weights/normal", "edge_weights/reduce"} <= set(tags["histograms"])
    from fastnas.fileio import read_jsonl

    losses = [row["train_loss"] for row in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx(losses)


def test_tensorboard_events_of_a_retraining(tmp_path: Path) -> None:
    from fastnas.train.retrain import run_train
    from fastnas.train.retrain_config import TrainConfig

    config = TrainConfig(
        genotype="DARTS_V2", dataset="digits", limit=32, test_limit=16, batch_size=16, C=4, layers=3,
        epochs=2, device="cpu", out_dir=str(tmp_path), run_name="t", tensorboard=True,
    )  # fmt: skip
    run_train(config, progress=False)
    events = _events(tmp_path / "t")
    assert [e.step for e in events.Scalars("accuracy/test_top1")] == [1, 2]
    assert "drop_path_prob" in events.Tags()["scalars"]
