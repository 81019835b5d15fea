"""Multi-seed harness: N seeds of one or more methods on one space and dataset, summarised.

Search quality is measured, not believed: every run records its wall time, its final supernet
validation accuracy, its skip-connect count (the skip-collapse diagnostic), the mean cosine distance
between the architectures of adjacent epochs (exploration vs exploitation; appendix B.5 of Yang, Hu, Lu,
Sun, Mei, Zeng, Shi, Han & Li, "DDSAS: Dynamic and Differentiable Space-Architecture Search", ACML 2021)
and, on NAS-Bench-201 with a results table, the benchmark accuracy of the derived cell. The summary
reports mean and standard deviation per method as markdown and JSON. Finished runs are reused and unfinished
ones resumed, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastnas.errors import ConfigError
from fastnas.fileio import atomic_write_json, atomic_write_text, read_jsonl
from fastnas.methods import get_method
from fastnas.train.search import resume_search, run_search
from fastnas.train.search_config import SearchConfig

TABLE_METRICS = ("c10_valid", "c10_test", "c100_test", "in16_test")


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"darts"`` or ``"darts:order=2,init_scale=0.01"`` -> (method name, typed options): each value is
    converted by the method's declared option type, unknown options are an error. A list value takes the
    commas that follow it: ``pdarts:stage_epochs=1,1,1,keep_ops=5,3,1``."""
    name, _, rest = spec.partition(":")
    method = get_method(name.strip())
    items: list[str] = []
    for piece in filter(None, rest.split(",")):
        if "=" in piece or not items:
            items.append(piece)
        else:
            items[-1] += "," + piece  # the next element of a list value
    texts: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"bad method option {item!r} in {spec!r}; write name:key=value,key=value")
        texts[key.strip().replace("-", "_")] = value.strip()
    try:
        options = method.Options.from_text(texts)
    except ConfigError as exc:
        raise ConfigError(f"{spec!r}: method {method.name}: {exc}") from None
    return method.name, {k: getattr(options, k) for k in texts}


def _label(spec: str) -> str:
    return spec.replace(":", "-").replace("=", "").replace(",", "-")


def _run_one(config: SearchConfig, progress: bool) -> dict[str, Any]:
    run_dir = Path(config.out_dir) / str(config.run_name)
    if (run_dir / "config.json").exists():
        resume_search(run_dir, progress=progress)  # finishes (or just reloads) an earlier run
    else:
        run_search(config, progress=progress)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    last = metrics[-1]
    distances = [m.get("arch_cosine_distance") for m in metrics]
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "epochs": len(metrics),
        "wall_time_s": sum(m["epoch_time_s"] for m in metrics),
        "supernet_val_acc": last["val_acc"],
        "skip_connect_count": last["skip_connect_count"],
        "skip_connect_curve": [m["skip_connect_count"] for m in metrics],
        "arch_cosine_curve": distances,
        "arch_cosine_distance": statistics.fmean(d for d in distances if d is not None)
        if any(d is not None for d in distances)
        else None,
        "genotype": last["genotype"],
    }
    if "table" in last:
        row.update({k: last["table"].get(k) for k in TABLE_METRICS})
        row["table_curve"] = [m["table"].get("c10_test") for m in metrics]
    return row


def _mean_std(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation per method of every recorded quantity."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "runs": len(group), "seeds": [r["seed"] for r in group]}
        for key in (
            "supernet_val_acc",
            "wall_time_s",
            "skip_connect_count",
            "arch_cosine_distance",
            *TABLE_METRICS,
        ):
            stats = _mean_std([float(r[key]) for r in group if r.get(key) is not None])
            if stats is not None:
                entry[key] = stats
        summary.append(entry)
    return summary


def format_summary(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    keys = [
        k
        for k in (
            "c10_test",
            "c100_test",
            "in16_test",
            "supernet_val_acc",
            "skip_connect_count",
            "arch_cosine_distance",
            "wall_time_s",
        )
        if any(k in s for s in summary)
    ]
    header = "| method | runs | " + " | ".join(keys) + " |"
    lines = [header, "|" + " --- |" * (len(keys) + 2)]
    for entry in summary:
        cells = []
        for key in keys:
            stats = entry.get(key)
            cells.append("-" if stats is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}")
        lines.append(f"| {entry['method']} | {entry['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_sweep(
    base: SearchConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every (method, seed) search into ``out_dir`` and write ``summary.md`` / ``summary.json``."""
    if not methods or not seeds:
        raise ConfigError("a sweep needs at least one method and one seed")
    out_dir = Path(out_dir)
    rows = []
    for spec in methods:
        name, options = parse_method(spec)
        for seed in seeds:
            config = dataclasses.replace(
                base,
                method=name,
                method_options={**base.method_options, **options},
                seed=seed,
                out_dir=str(out_dir),
                run_name=f"{_label(spec)}-s{seed}",
            )
            rows.append({"method": spec, "seed": seed, **_run_one(config, progress)})
    summary = summarise(rows)
    result: dict[str, Any] = {"space": base.space, "dataset": base.dataset, "runs": rows, "summary": summary}
    try:  # every run's validation curves on one figure
        from fastnas.train.plots import plot_sweep

        result["plot"] = str(plot_sweep(out_dir, [r["run_dir"] for r in rows]))
    except ConfigError as exc:  # matplotlib is an optional extra: say so instead of a picture
        result["plot"] = None
        result["plot_skipped"] = str(exc)
    atomic_write_json(out_dir / "summary.json", result)
    atomic_write_text(out_dir / "summary.md", format_summary(summary))
    return result
