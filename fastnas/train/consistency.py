"""Super-net / child-net consistency (Table 1 of Yang, You, Li, Wang, Qian & Lin, "Towards Improving the
Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture Search", CVPR 2021), for
any method.

At the end of a search, the validation accuracy of the super-net (its current edge weights) is compared
with that of the child-net: the derived architecture with the inherited weights, i.e. the same supernet
run with one-hot edge weights on the derived ``(edge, op)`` pairs and zero elsewhere ("inference only
through the paths in the derived architecture", section 4.1). For the DARTS supernet that is the derived
cell inside the supernet; for the EnTranNAS supernets the Engine-cells then compute exactly the derived
cell and the Transit-cells derive the same cell from the one-hot weights. BN uses its running statistics
(evaluation mode) in both passes. ``drop = super_acc - child_acc`` (percentage points).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fastnas.nb201.arch import NB201Arch
from fastnas.search_model import SearchModel
from fastnas.spaces import DartsSpace
from fastnas.train.device import autocast

__all__ = ["child_weights", "evaluate_weights", "measure_consistency"]

#: sums a list of numbers over the processes of a run (:meth:`fastnas.train.distributed.Distributed.sum`)
SumOver = Callable[[Sequence[float | int | torch.Tensor], torch.device], list[float]]


def _local_sum(values: Sequence[float | int | torch.Tensor], device: torch.device) -> list[float]:
    return [float(v) for v in values]


def child_weights(model: SearchModel, genotype: Any | None = None) -> dict[str, torch.Tensor]:
    """One-hot edge weights ``{cell_type: [num_edges, num_ops]}`` of ``genotype`` (default: the derived
    one) on ``model``'s space: 1 on every derived ``(edge, op)`` pair, 0 elsewhere."""
    space = model.space
    genotype = genotype if genotype is not None else model.genotype()
    reference = model.arch_weights()
    out = {t: torch.zeros_like(w, dtype=torch.float32) for t, w in reference.items()}
    if isinstance(genotype, NB201Arch):
        for e, op in enumerate(genotype.ops):
            out["cell"][e, space.op_index(op)] = 1.0
        return out
    if not isinstance(space, DartsSpace):
        raise TypeError(f"no child-net weights for space {space.name!r}")
    edge_of = {(e.node, e.source): e.index for e in space.edges}
    for cell_type in out:
        if cell_type == "reduce":
            cell = genotype.cell("reduce")
        else:
            cell = genotype.cell("normal", space.normal_types.index(cell_type))
        for node, pairs in enumerate(cell.nodes):
            for op, source in pairs:
                out[cell_type][edge_of[(node, source)], space.op_index(op)] = 1.0
    return out


@torch.no_grad()
def evaluate_weights(
    model: SearchModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    weights: Mapping[str, torch.Tensor],
    device: torch.device,
    precision: str = "fp32",
    sum_over: SumOver = _local_sum,
) -> tuple[float, float]:
    """Loss and accuracy (%) of ``model.supernet`` under fixed edge ``weights`` (evaluation mode);
    ``sum_over`` adds up the totals of every process when each one evaluates a shard."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    try:
        for x, y in batches:
            with autocast(device, precision):
                logits = model.supernet(x, weights)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
    finally:
        model.train(was_training)
    loss_sum, n_correct, n = sum_over([total_loss, correct, count], device)
    if n == 0:
        raise ValueError("no validation batches to measure consistency on")
    return loss_sum / n, 100.0 * n_correct / n


def measure_consistency(
    model: SearchModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    precision: str = "fp32",
    sum_over: SumOver = _local_sum,
) -> dict[str, Any]:
    """Table 1 for one search: super-net and child-net validation accuracy and their drop.

    ``batches`` must be re-iterable (it is read twice), e.g. a list or the search's evaluation loader.
    """
    with torch.no_grad():
        super_weights = {t: w.detach() for t, w in model.arch_weights().items()}
    genotype = model.genotype()
    super_loss, super_acc = evaluate_weights(model, batches, super_weights, device, precision, sum_over)
    child = {t: w.to(device) for t, w in child_weights(model, genotype).items()}
    child_loss, child_acc = evaluate_weights(model, batches, child, device, precision, sum_over)
    return {
        "super_acc": super_acc,
        "child_acc": child_acc,
        "drop": super_acc - child_acc,
        "super_loss": super_loss,
        "child_loss": child_loss,
        "genotype": genotype.to_literal(),
    }
