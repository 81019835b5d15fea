"""Parameter and FLOP counts of a supernet configuration (``fastnas info``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastnas.nn.search_model import SearchModel
from fastnas.spaces import build_space


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``model(example)`` as counted by ``torch.utils.flop_counter`` (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def supernet_info(
    method: str = "darts",
    space: str = "darts",
    nodes: int = 4,
    C: int = 16,
    layers: int = 8,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> dict[str, Any]:
    """Sizes of the search supernet: weights, architecture parameters, FLOPs of one image."""
    model = SearchModel.build(
        method, space=build_space(space, num_nodes=nodes), C=C, layers=layers,
        num_classes=num_classes, in_channels=in_channels,
    )
    flops = count_flops(model, torch.randn(1, in_channels, image_size, image_size))
    return {
        "kind": "supernet",
        "method": method,
        "space": space,
        "nodes": nodes,
        "C": C,
        "layers": layers,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "num_edges_per_cell": model.space.num_edges,
        "ops": list(model.space.ops),
        "weight_parameters": count_parameters(model.supernet),
        "arch_parameters": sum(p.numel() for p in model.arch_parameters()),
        "flops_per_image": flops,
        "macs_per_image": flops // 2,
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"supernet ({info['method']}, space {info['space']}, {info['nodes']} nodes, C={info['C']}, "
        f"{info['layers']} layers, {info['num_classes']} classes, input {info['in_channels']}x"
        f"{info['image_size']}x{info['image_size']})",
        f"  weight parameters : {info['weight_parameters']:,} ({info['weight_parameters'] / 1e6:.3f} M)",
        f"  arch parameters   : {info['arch_parameters']:,}",
        f"  edges per cell    : {info['num_edges_per_cell']} x {len(info['ops'])} ops",
        f"  FLOPs per image   : {info['flops_per_image']:,} ({info['macs_per_image'] / 1e6:.1f} M multiply-adds)",
    ]
    return "\n".join(lines)
