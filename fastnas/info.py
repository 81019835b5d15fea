"""Parameter and FLOP counts of a supernet configuration or of a genotype's evaluation network
(``fastnas info``; the DARTS networks of Liu, Simonyan & Yang, "DARTS: Differentiable Architecture
Search", ICLR 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fastnas.genotype import Genotype, load_genotype
from fastnas.genotype_zoo import resolve_zoo_name
from fastnas.nn.counting import count_flops, count_parameters, count_parameters_without_auxiliary
from fastnas.nn.eval_network import build_eval_network
from fastnas.search_model import SearchModel
from fastnas.spaces import build_space
from fastnas.train.retrain_config import DATASET_SHAPES, RECIPES, normalise_dataset

__all__ = [
    "count_flops",
    "count_parameters",
    "count_parameters_without_auxiliary",
    "format_info",
    "format_network_info",
    "network_info",
    "supernet_info",
]


def supernet_info(
    method: str = "darts",
    space: str = "darts",
    nodes: int = 4,
    C: int = 16,
    layers: int = 8,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sizes of the search supernet: weights, architecture parameters, FLOPs of one image. ``options``
    are the method's (e.g. ``{"bottleneck": 0}`` for EnTranNAS)."""
    model = SearchModel.build(
        method,
        options=dict(options or {}),
        space=build_space(space, num_nodes=nodes),
        C=C,
        layers=layers,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    flops = count_flops(model, torch.randn(1, in_channels, image_size, image_size))
    return {
        "kind": "supernet",
        "method": method,
        "options": model.algorithm.options.to_json(),
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
        f"  FLOPs per image   : {info['flops_per_image']:,} "
        f"({info['macs_per_image'] / 1e6:.1f} M multiply-adds)",
    ]
    return "\n".join(lines)


def network_info(
    genotype: Genotype | str,
    dataset: str = "cifar10",
    C: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Sizes of the evaluation network of ``genotype`` on ``dataset`` (the DARTS evaluation networks).

    Defaults are the published ones (CIFAR: C=36, 20 layers, 32x32; ImageNet: C=48, 14 layers,
    224x224, 1000 classes). Parameters are reported without and with the auxiliary head (DARTS counts
    exclude it); FLOPs are of one image in eval mode (no auxiliary head), by ``torch.utils.flop_counter``.
    """
    key = normalise_dataset(dataset)
    recipe = RECIPES[key]
    classes, channels, size = DATASET_SHAPES[key]
    C = recipe.C if C is None else C
    layers = recipe.layers if layers is None else layers
    num_classes = classes if num_classes is None else num_classes
    in_channels = channels if in_channels is None else in_channels
    image_size = size if image_size is None else image_size
    resolved = load_genotype(genotype)
    model = build_eval_network(resolved, recipe.network, C, layers, num_classes, True, in_channels)
    with_aux = count_parameters(model)
    without_aux = count_parameters_without_auxiliary(model)
    flops = count_flops(model, torch.randn(1, in_channels, image_size, image_size))
    name = resolve_zoo_name(genotype) if isinstance(genotype, str) else None
    return {
        "kind": "network",
        "genotype_name": name,
        "genotype": resolved.to_literal(),
        "dataset": key,
        "network": recipe.network,
        "C": C,
        "layers": layers,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "parameters": without_aux,
        "parameters_with_aux": with_aux,
        "auxiliary_parameters": with_aux - without_aux,
        "flops_per_image": flops,
        "macs_per_image": flops // 2,
    }


def format_network_info(info: dict[str, Any]) -> str:
    """Human-readable :func:`network_info`."""
    title = info["genotype_name"] or "genotype"
    net = "NetworkCIFAR" if info["network"] == "cifar" else "NetworkImageNet"
    lines = [
        f"{title}: {net} on {info['dataset']} (C={info['C']}, {info['layers']} layers, "
        f"{info['num_classes']} classes, input {info['in_channels']}x{info['image_size']}x"
        f"{info['image_size']})",
        f"  parameters          : {info['parameters']:,} ({info['parameters'] / 1e6:.2f} M, without the "
        "auxiliary head)",
        f"  with auxiliary head : {info['parameters_with_aux']:,} "
        f"({info['parameters_with_aux'] / 1e6:.2f} M)",
        f"  FLOPs per image     : {info['flops_per_image']:,} ({info['macs_per_image'] / 1e6:.1f} M "
        "multiply-adds, eval mode)",
        f"  genotype = {info['genotype']}",
    ]
    return "\n".join(lines)
