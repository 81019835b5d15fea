"""How well a trained supernet ranks architectures on NAS-Bench-201, where the truth is known (the
consistency measure of Yang, You, Li, Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency,
and Flexibility of Differentiable Neural Architecture Search", CVPR 2021, Table 2: Kendall tau of DARTS
-0.47, EnTranNAS 0.33, DST 0.60; NAS-Bench-201: Dong & Yang, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR 2020).

Each architecture is scored with the supernet's inherited weights: the NB201 supernet runs with one-hot
edge weights on the architecture's ops. Its BatchNorm running statistics were accumulated under the
supernet's mixed weights, so for each architecture they are recomputed first: reset, then a cumulative
average over ``bn_batches`` training batches of the weight half (no weight changes), as one-shot NAS
evaluations do. The architecture is then scored in evaluation mode on the architecture half (no
augmentation): accuracy and loss. Kendall tau and Spearman rho (``scipy.stats``, tau-b on ties) compare
the scores with the table's CIFAR-10 test accuracy; ``kendall_tau_loss`` ranks by the (negated) loss,
which breaks the ties of small validation sets.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from fastnas.errors import CheckpointError, ConfigError, DataError
from fastnas.fileio import atomic_write_json
from fastnas.nb201 import NB201Arch, NB201Table
from fastnas.train.checkpoint import has_checkpoint
from fastnas.train.consistency import child_weights, evaluate_weights
from fastnas.train.search_config import ResolvedSearchConfig

__all__ = ["choose_archs", "rank_architectures", "rank_correlations"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def choose_archs(table: NB201Table, count: int, seed: int) -> list[NB201Arch]:
    """``count`` distinct cells of the table, drawn with ``seed``."""
    cells = [r.arch for r in table]
    if not 2 <= count <= len(cells):
        raise ConfigError(f"--archs must be between 2 and the table's {len(cells):,} cells, got {count}")
    return random.Random(seed).sample(cells, count)


def rank_correlations(scores: Sequence[float], truth: Sequence[float]) -> tuple[float, float]:
    """Kendall tau-b and Spearman rho of ``scores`` against ``truth``."""
    from scipy import stats

    tau = stats.kendalltau(scores, truth).statistic
    rho = stats.spearmanr(scores, truth).statistic
    return float(tau), float(rho)


@torch.no_grad()
def recompute_batch_norm(
    supernet: torch.nn.Module, weights: dict[str, torch.Tensor], batches: Batches, count: int
) -> None:
    """Reset every BN layer's running statistics and average them over ``count`` batches under ``weights``."""
    layers = [m for m in supernet.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = supernet.training
    supernet.train()
    try:
        for x, _ in islice(batches, count):
            supernet(x, weights)
    finally:
        supernet.train(was_training)
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum


def rank_architectures(
    run_dir: str | Path,
    table_path: str | Path,
    archs: int | Sequence[NB201Arch] = 50,
    seed: int = 0,
    bn_batches: int = 4,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``archs`` (a count of random table cells, or a list) with the supernet of the NB201 search in
    ``run_dir`` and correlate with the table; written to ``run_dir/rank.json`` and returned."""
    from fastnas.train.run_state import open_checkpoint
    from fastnas.train.search import CHECKPOINT_SCHEMA, SearchRunner

    run_dir = Path(run_dir)
    config = ResolvedSearchConfig.load(run_dir / "config.json")
    if config.space != "nb201":
        raise ConfigError(
            f"{run_dir} searched the {config.space!r} space; `fastnas rank` measures ranking on "
            "NAS-Bench-201, where every cell's accuracy is known: rank a `fastnas search --space nb201` run"
        )
    if bn_batches < 1:
        raise ConfigError(f"--bn-batches must be >= 1, got {bn_batches}")
    if not has_checkpoint(run_dir / "checkpoint.pt"):
        raise CheckpointError(f"{run_dir} has no checkpoint.pt yet; rank a run after its first epoch")
    table = NB201Table.load(table_path)
    chosen = choose_archs(table, archs, seed) if isinstance(archs, int) else list(archs)
    unknown = [a for a in chosen if a not in table]
    if unknown:
        raise DataError(f"{len(unknown)} architecture(s) are not in {table_path}, e.g. {unknown[0]}")
    # one process, whatever the search ran on; nothing is written but rank.json
    runner = SearchRunner(dataclasses.replace(config, world_size=1), run_dir, progress=False, device=device)
    loaded = open_checkpoint(
        run_dir, CHECKPOINT_SCHEMA, config.epochs, runner.device, lambda _: None, clean=False,
        epoch_base=config.epoch_base,
    )  # fmt: skip
    assert loaded is not None
    model = runner.model
    model.load_state_dict(loaded.state["model"])
    rows = []
    for arch in tqdm(chosen, desc="ranking", disable=not progress, dynamic_ncols=True):
        weights = {t: w.to(runner.device) for t, w in child_weights(model, arch).items()}
        runner.weight_loader.set_epoch(0)
        recompute_batch_norm(model.supernet, weights, runner.weight_loader, bn_batches)
        runner.eval_loader.set_epoch(0)
        loss, acc = evaluate_weights(model, runner.eval_loader, weights, runner.device, config.precision)
        known = table.lookup(arch).c10_test
        if known is None:
            raise DataError(f"{table_path} has no CIFAR-10 test accuracy for {arch}")
        rows.append(
            {"arch": arch.to_literal(), "supernet_acc": acc, "supernet_loss": loss, "c10_test": known}
        )
    truth = [float(r["c10_test"]) for r in rows]
    tau, rho = rank_correlations([r["supernet_acc"] for r in rows], truth)
    tau_loss, rho_loss = rank_correlations([-r["supernet_loss"] for r in rows], truth)
    result = {
        "run_dir": str(run_dir),
        "table": str(table_path),
        "epoch": loaded.state["epoch"] - config.epoch_base + 1,  # the supernet's last epoch, from 1
        "num_archs": len(rows),
        "seed": seed,
        "bn_batches": bn_batches,
        "kendall_tau": tau,
        "spearman_rho": rho,
        "kendall_tau_loss": tau_loss,
        "spearman_rho_loss": rho_loss,
        "archs": rows,
    }
    atomic_write_json(run_dir / "rank.json", result)
    log(
        f"{len(rows)} architectures, supernet after epoch {result['epoch']}: Kendall tau {tau:.3f}, "
        f"Spearman rho {rho:.3f} (by loss: tau {tau_loss:.3f}, rho {rho_loss:.3f}); "
        f"written to {run_dir / 'rank.json'}"
    )
    return result
