"""Pictures of a search run (``fastnas plot RUN_DIR``): PNG files under ``RUN_DIR/plots/`` (matplotlib,
the optional ``[viz]`` extra).

- ``curves.png``: training and validation loss and accuracy per epoch (P-DARTS stage boundaries marked);
- ``alphas_epoch<N>.png``: the edge weights (edge x op heatmap) of every cell type at chosen epochs;
- ``alpha_curves.png``: each op's mean weight over the edges, per cell type, over the epochs;
- ``skips.png``: the skip_connect count of the derived cell (skip collapse) and, with a NAS-Bench-201
  table, the derived cell's CIFAR-10 test accuracy per epoch;
- ``ddsas_sampling.png``: DDSAS's op sampling counts (edge x op) after the last resample;
- ``stages.png``: P-DARTS' candidate ops per edge after each stage;
- ``cell_<type>.png``: the derived cells as DAGs (inputs, intermediate nodes, output; edges labelled
  with their ops), drawn with matplotlib (no graphviz needed).

Each figure is written only when the run holds its data (a DARTS run has no sampling counts); what was
written is returned, and what was not is said with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastnas.errors import ConfigError, DataError
from fastnas.genotype import Genotype
from fastnas.nb201 import NB201Arch
from fastnas.train.run_state import EPOCH_BASE, read_history, run_epoch_base

__all__ = ["plot_run", "plot_sweep", "require_matplotlib"]

DPI = 100


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            'pictures need matplotlib, which is not installed: pip install "fastnas[viz]"'
        ) from None
    return plt


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    fig.clf()
    return path


def _rows(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """The rows of a history file of the run, epochs numbered from 1 (a run of an earlier fastnas
    numbered them from 0: see :func:`fastnas.train.run_state.read_history`)."""
    path = run_dir / name
    if not path.exists():
        return []
    base = run_epoch_base(run_dir) if (run_dir / "config.json").is_file() else EPOCH_BASE
    return read_history(path, base)


def _ops(run_dir: Path) -> list[str]:
    from fastnas.train.search_config import ResolvedSearchConfig

    return list(ResolvedSearchConfig.load(run_dir / "config.json").build_space().ops)


def plot_run(run_dir: str | Path, epochs: Sequence[int] | None = None) -> dict[str, Path]:
    """Every picture the search run in ``run_dir`` has data for, in ``run_dir/plots``; ``epochs``
    (1-based) chooses the heatmaps' epochs (default: the first, the middle and the last)."""
    plt = require_matplotlib()
    run_dir = Path(run_dir)
    metrics = _rows(run_dir, "metrics.jsonl")
    if not (run_dir / "config.json").is_file() or not metrics:
        raise DataError(
            f"{run_dir} has no search metrics (config.json and metrics.jsonl); plot a run directory of "
            "`fastnas search` after its first epoch"
        )
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written: dict[str, Path] = {"curves": _save(_curves(plt, metrics), out / "curves.png")}
    ops = _ops(run_dir)
    alphas = _rows(run_dir, "alphas.jsonl")
    if alphas:
        last = len(alphas)
        chosen = sorted({1, (last + 1) // 2, last}) if epochs is None else list(epochs)
        for epoch in chosen:
            if not 1 <= epoch <= last:
                raise ConfigError(f"--epochs {epoch}: the run has epochs 1-{last}")
            fig = _heatmaps(plt, alphas[epoch - 1]["weights"], ops, f"edge weights after epoch {epoch}")
            written[f"alphas_epoch{epoch}"] = _save(fig, out / f"alphas_epoch{epoch}.png")
        written["alpha_curves"] = _save(_alpha_curves(plt, alphas, ops), out / "alpha_curves.png")
    written["skips"] = _save(_skips(plt, metrics), out / "skips.png")
    sampling = _rows(run_dir, "sampling.jsonl")
    if sampling:
        counts = sampling[-1]["counts"]
        fig = _heatmaps(
            plt, counts, ops, f"DDSAS op sampling counts after {len(sampling)} resamples", "Greens"
        )
        written["ddsas_sampling"] = _save(fig, out / "ddsas_sampling.png")
    if (run_dir / "stages.json").is_file():
        stages = json.loads((run_dir / "stages.json").read_text())
        written["stages"] = _save(_stages(plt, stages), out / "stages.png")
    if (run_dir / "genotype.json").is_file():
        for name, fig in _cells(plt, json.loads((run_dir / "genotype.json").read_text())):
            written[f"cell_{name}"] = _save(fig, out / f"cell_{name}.png")
    plt.close("all")
    return written


def _curves(plt: Any, metrics: list[dict[str, Any]]) -> Any:
    epochs = [r["epoch"] for r in metrics]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [r[key] for r in metrics], marker=".", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        acc_ax.plot(epochs, [r[key] for r in metrics], marker=".", label=label)
    for r in metrics:
        if r.get("stage_epoch") == 1 and r["epoch"] > 1:  # a P-DARTS stage starts
            for ax in (loss_ax, acc_ax):
                ax.axvline(r["epoch"], color="grey", linestyle=":")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    loss_ax.legend()
    acc_ax.legend()
    fig.tight_layout()
    return fig


def _heatmaps(plt: Any, per_type: dict[str, Any], ops: list[str], title: str, cmap: str = "viridis") -> Any:
    types = list(per_type)
    fig, axes = plt.subplots(1, len(types), figsize=(5 * len(types), 6), squeeze=False)
    for ax, cell_type in zip(axes[0], types, strict=True):
        values = per_type[cell_type]
        image = ax.imshow(values, aspect="auto", cmap=cmap)
        ax.set_xticks(range(len(values[0])), ops[: len(values[0])], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(values)))
        ax.set(ylabel="edge", title=cell_type)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _alpha_curves(plt: Any, alphas: list[dict[str, Any]], ops: list[str]) -> Any:
    types = list(alphas[0]["weights"])
    fig, axes = plt.subplots(1, len(types), figsize=(6 * len(types), 4), squeeze=False)
    epochs = [r["epoch"] for r in alphas]
    for ax, cell_type in zip(axes[0], types, strict=True):
        for k, op in enumerate(ops):
            means = []
            for r in alphas:
                rows = r["weights"][cell_type]
                means.append(sum(row[k] for row in rows) / len(rows) if k < len(rows[0]) else float("nan"))
            ax.plot(epochs, means, marker=".", label=op)
        ax.set(xlabel="epoch", ylabel="mean edge weight", title=cell_type)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _skips(plt: Any, metrics: list[dict[str, Any]]) -> Any:
    epochs = [r["epoch"] for r in metrics]
    tables = [r.get("table", {}).get("c10_test") for r in metrics]
    with_table = any(t is not None for t in tables)
    fig, axes = plt.subplots(1, 2 if with_table else 1, figsize=(10 if with_table else 5, 4), squeeze=False)
    axes[0][0].plot(epochs, [r["skip_connect_count"] for r in metrics], marker="o")
    axes[0][0].set(xlabel="epoch", ylabel="skip_connect in the derived cell", title="skip connections")
    if with_table:
        axes[0][1].plot(epochs, tables, marker="o", color="C2")
        axes[0][1].set(
            xlabel="epoch", ylabel="CIFAR-10 test accuracy (%)", title="derived cell, NAS-Bench-201"
        )
    fig.tight_layout()
    return fig


def _stages(plt: Any, stages: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in stages:
        kept = stage.get("kept") or stage.get("candidates") or {}
        for k, (cell_type, edges) in enumerate(sorted(kept.items())):
            ax.bar(
                stage["stage"] + 0.4 * k - 0.2, sum(len(e) for e in edges) / max(len(edges), 1), width=0.4,
                color=f"C{k}", label=cell_type if stage is stages[0] else None,
            )  # fmt: skip
    ax.set(xlabel="stage", ylabel="candidate ops per edge after the stage", title="P-DARTS stages")
    ax.set_xticks([s["stage"] for s in stages])
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return fig


def _cells(plt: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
    if data.get("format", "").startswith("fastnas.nb201") or "arch_str" in data:
        arch = NB201Arch.from_json(data)
        edges = [(f"{s}", f"{t}", op) for s, t, op in arch.edges]
        return [("cell", _dag(plt, edges, [str(n) for n in range(4)], "NAS-Bench-201 cell", inputs=1))]
    genotype = Genotype.from_json(data)
    figures = []
    for name, cell in genotype.cells:
        inputs = ["c_{k-2}", "c_{k-1}"]
        labels = [*inputs, *[str(i) for i in range(len(cell.nodes))], "c_{k}"]
        edges = []
        for node, pairs in enumerate(cell.nodes):
            edges += [(labels[source], labels[node + 2], op) for op, source in pairs]
        edges += [(labels[i], "c_{k}", "") for i in cell.concat]
        figures.append((name, _dag(plt, edges, labels, f"{name} cell", inputs=2)))
    return figures


def _dag(plt: Any, edges: list[tuple[str, str, str]], nodes: list[str], title: str, inputs: int) -> Any:
    """Layered drawing: the ``inputs`` input nodes in the first column, then one column per node; edges
    as arrows (arcs when they skip a column) with the op name at the middle of each arc."""
    fig, ax = plt.subplots(figsize=(11, 5))
    position: dict[str, tuple[float, float]] = {}
    for i, name in enumerate(nodes):
        if i < inputs:
            position[name] = (0.0, 1.0 - 2.0 * i / max(inputs - 1, 1)) if inputs > 1 else (0.0, 0.0)
        else:
            column = i - inputs + 1
            position[name] = (float(column), 0.0 if i == len(nodes) - 1 else (0.8 if column % 2 else -0.8))
    seen: dict[tuple[str, str], int] = {}
    for source, target, op in edges:
        (x0, y0), (x1, y1) = position[source], position[target]
        repeat = seen[source, target] = seen.get((source, target), -1) + 1  # two ops on one edge: two arcs
        rad = (0.3 if x1 - x0 > 1 else 0.0) + (-0.3 if repeat % 2 else 0.3) * ((repeat + 1) // 2)
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "dimgrey", "shrinkA": 14, "shrinkB": 14,
                        "mutation_scale": 14, "connectionstyle": f"arc3,rad={rad}"},
        )  # fmt: skip
        if op:  # the arc's midpoint (matplotlib's arc3 control point, halfway)
            mx, my = (x0 + x1) / 2 + rad * (y1 - y0) / 2, (y0 + y1) / 2 - rad * (x1 - x0) / 2
            label = {"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none"}
            ax.text(mx, my, op, ha="center", va="center", fontsize=8, color="C3", bbox=label)
    for name, (x, y) in position.items():
        ax.text(x, y, f"${name}$" if "_" in name else name, ha="center", va="center", fontsize=12,
                bbox={"boxstyle": "round", "facecolor": "lightyellow"})  # fmt: skip
    columns = max(x for x, _ in position.values())
    ax.set_xlim(-0.5, columns + 0.5)
    ax.set_ylim(-1.6, 1.6)
    ax.axis("off")
    ax.set_title(title)
    return fig


def plot_sweep(sweep_dir: str | Path, run_dirs: Sequence[str | Path]) -> Path:
    """Validation accuracy and loss of every run of a sweep on one figure: ``sweep_dir/sweep_curves.png``."""
    plt = require_matplotlib()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for run_dir in run_dirs:
        metrics = _rows(Path(run_dir), "metrics.jsonl")
        epochs = [r["epoch"] for r in metrics]
        acc_ax.plot(epochs, [r["val_acc"] for r in metrics], marker=".", label=Path(run_dir).name)
        loss_ax.plot(epochs, [r["val_loss"] for r in metrics], marker=".", label=Path(run_dir).name)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    loss_ax.set(xlabel="epoch", ylabel="validation loss", title="validation loss")
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    path = _save(fig, Path(sweep_dir) / "sweep_curves.png")
    plt.close("all")
    return path
