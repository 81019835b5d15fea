"""Parameter and FLOP counts of networks (parameters counted as the DARTS code counts them)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters", "count_parameters_without_auxiliary"]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters_without_auxiliary(model: nn.Module) -> int:
    """Parameters whose name does not contain ``auxiliary`` (the DARTS convention for reported sizes)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``model(example)`` as counted by ``torch.utils.flop_counter`` (2 per multiply-add),
    in evaluation mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
