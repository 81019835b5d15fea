"""A closed-form lower bound on the size of a search supernet, checked before it is built.

``--C 1000000000`` or ``--layers 1000000000`` would otherwise end, after minutes of building, in a
``RuntimeError`` or ``MemoryError``. :func:`estimate_supernet` counts, from the sizes alone (C, cells,
nodes, image size; nothing is built), what every supernet of those sizes must hold: the weights of the
stem, of the two 1x1 preprocessing convolutions of each DARTS cell (at least ``c^2 / 2``) or of the
NAS-Bench-201 residual blocks, and of the classifier; one module object per source state of each cell;
the feature maps of the states of every cell for one image. Candidate ops only add to these figures, so
a refusal is never wrong; the real supernet is larger (the DARTS default: about 1.9M weights against a
bound of about 60K). :func:`check_supernet_size` refuses a supernet whose bound exceeds

- the machine's memory (:func:`machine_memory`): weights (fp32) and module objects
  (:data:`MODULE_BYTES` each) live in host memory while the supernet is built; on a CPU run the
  gradients, the momentum and one batch's feature maps too;
- :data:`MAX_TENSOR_ELEMENTS` in one tensor (a weight, or one batch's feature map): beyond it many
  kernels index with 32-bit integers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from fastnas.errors import ConfigError
from fastnas.nn.skeleton import reduction_layers
from fastnas.ops import get_op_spec

__all__ = [
    "MAX_TENSOR_ELEMENTS",
    "MODULE_BYTES",
    "SizeEstimate",
    "check_supernet_size",
    "estimate_space",
    "estimate_supernet",
    "machine_memory",
]

MAX_TENSOR_ELEMENTS = 2**31
"""Most elements one tensor of the supernet may have (a weight, or a feature map of one batch)."""
MODULE_BYTES = 1024
"""Host memory of one ``nn.Module`` object, at least (an empty ``nn.Identity`` takes about 2 KiB)."""
_FP32 = 4


@dataclass(frozen=True)
class SizeEstimate:
    """Lower bounds on what a supernet holds (:func:`estimate_supernet`)."""

    parameters: int  # weights
    modules: int  # module objects (host memory)
    activations: int  # feature-map values of one image that the backward pass keeps
    largest_weight: int  # elements of the largest weight tensor
    largest_activation: int  # elements of the largest feature map of one image


def _halve(size: int, times: int) -> int:
    for _ in range(times):
        size //= 2
    return size


def estimate_supernet(
    space: str,
    C: int,
    layers: int,
    nodes: int = 4,
    *,
    multiplier: int | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str = "cifar",
    conv_ops: int = 0,
    op_copies: int | None = None,
    op_divisor: int = 1,
) -> SizeEstimate:
    """Lower bounds on the size of the supernet of ``space`` ("nb201" or a DARTS space) with ``C``
    initial channels, ``layers`` cells (cells per stage on NAS-Bench-201) of ``nodes`` intermediate nodes
    whose output concatenates ``multiplier`` states (default ``nodes``), on ``image_size``-pixel images;
    closed form, instant for any sizes.

    Each cell holds ``op_copies`` (default: one per edge) of each of its ``conv_ops`` candidate ops with
    weights, on ``c // op_divisor`` channels (PC-DARTS' partial channels, EnTranNAS' bottleneck); each
    holds at least a ``c x c`` 1x1 convolution (every registered op with weights does)."""
    C, layers, nodes = max(int(C), 1), max(int(layers), 1), max(int(nodes), 1)
    divisor = max(int(op_divisor), 1)
    if space == "nb201":
        return _estimate_nb201(C, layers, num_classes, in_channels, image_size, conv_ops, divisor)
    copies = nodes * (nodes + 3) // 2 if op_copies is None else max(int(op_copies), 0)
    mult = max(int(multiplier if multiplier is not None else nodes), 1)
    if stem == "imagenet":
        side = _halve(image_size, 3)  # stem0 (two stride-2 convs) and stem1 (one)
        stem_weights = in_channels * (C // 2) * 9 + (C // 2) * C * 9 + C * C * 9
        stem_values = (C // 2) * _halve(image_size, 1) ** 2 + C * _halve(image_size, 2) ** 2 + C * side**2
        largest_weight = max(in_channels * (C // 2) * 9, C * C * 9)
    else:
        side = image_size
        stem_weights = in_channels * 3 * C * 9
        stem_values = 3 * C * side**2
        largest_weight = stem_weights
    reductions = sorted(r for r in set(reduction_layers(layers)) if r < layers)
    # cells as groups (count, channels, side of the output): normal cells between the reductions
    groups: list[tuple[int, int, int]] = []
    start, channels = 0, C
    for done, r in enumerate(reductions):
        groups.append((r - start, channels, _halve(side, done)))
        channels *= 2
        groups.append((1, channels, _halve(side, done + 1)))
        start = r + 1
    groups.append((layers - start, channels, _halve(side, len(reductions))))
    groups = [g for g in groups if g[0] > 0]
    parameters = stem_weights + mult * channels * num_classes  # stem, classifier
    activations, largest_activation = stem_values, stem_values
    for count, c, s in groups:
        parameters += count * (c * c // 2)  # preprocess1: c_prev >= c / 2 channels to c
        parameters += count * copies * conv_ops * (c // divisor) ** 2
        activations += count * (nodes + 2) * c * s * s  # two preprocessed inputs and the nodes
        largest_activation = max(largest_activation, mult * c * s * s)  # the cell's output
        largest_weight = max(largest_weight, c * c // 2)
    largest_weight = max(largest_weight, mult * channels * num_classes)
    modules = layers * (2 + max(nodes + 1, copies * conv_ops))  # preprocessors, op modules
    return SizeEstimate(parameters, modules, activations, largest_weight, largest_activation)


def estimate_space(
    space: Any,
    C: int,
    layers: int,
    *,
    options: Any = None,
    partial_k: int = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    stem: str = "cifar",
    all_ops: bool = True,
) -> SizeEstimate:
    """:func:`estimate_supernet` for a :class:`~fastnas.spaces.DartsSpace` or
    :class:`~fastnas.spaces.NB201Space` and the method ``options`` (EnTranNAS' feature sharing and
    bottleneck change how many op modules a cell holds and on how many channels). Without ``all_ops``
    (a later P-DARTS stage) or with per-edge candidate sets, the candidate ops are not counted."""
    restricted = not all_ops or bool(getattr(space, "candidates", ()))
    conv_ops = 0 if restricted else sum(get_op_spec(op).kind == "conv" for op in space.ops)
    nodes = int(space.num_nodes)
    copies, divisor = None, max(int(partial_k), 1)
    if options is not None and hasattr(options, "bottleneck") and hasattr(options, "feature_sharing"):
        copies = nodes + 1 if options.feature_sharing else None  # EnTranNAS: op modules per source
        divisor *= max(int(options.bottleneck), 1)
    name = "nb201" if getattr(space, "name", "") == "nb201" else "darts"
    return estimate_supernet(
        name, C, layers, nodes, multiplier=getattr(space, "multiplier", None), num_classes=num_classes,
        in_channels=in_channels, image_size=image_size, stem=stem, conv_ops=conv_ops, op_copies=copies,
        op_divisor=divisor,
    )  # fmt: skip


def _estimate_nb201(
    C: int, N: int, num_classes: int, in_channels: int, image_size: int, conv_ops: int, divisor: int
) -> SizeEstimate:
    widths = (C, 2 * C, 4 * C)
    sides = (image_size, _halve(image_size, 1), _halve(image_size, 2))
    parameters = in_channels * C * 9 + widths[-1] * num_classes  # stem, classifier
    parameters += sum(N * 6 * conv_ops * (c // divisor) ** 2 for c in widths)  # 6 edges per cell
    for c_in, c_out in ((C, 2 * C), (2 * C, 4 * C)):  # residual blocks: two 3x3 convs and a 1x1 shortcut
        parameters += 9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out
    activations = C * image_size**2 + sum(N * 4 * c * s * s for c, s in zip(widths, sides, strict=True))
    largest_weight = max(in_channels * C * 9, 9 * widths[-1] ** 2, widths[-1] * num_classes)
    modules = 3 * N * 6 * max(conv_ops, 1)
    return SizeEstimate(parameters, modules, activations, largest_weight, C * image_size**2)


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def _count(n: int) -> str:
    """``1,234,567`` or, from 10^15 on, ``3.5e+21`` (for integers of any size: no float conversion)."""
    if n < 10**15:
        return f"{n:,}"
    exponent = int(math.log10(n))
    if n < 10**exponent:  # log10 rounded up
        exponent -= 1
    mantissa = n // 10 ** (exponent - 2)  # three digits
    if mantissa >= 1000:  # log10 rounded down
        exponent, mantissa = exponent + 1, mantissa // 10
    return f"{mantissa // 100}.{mantissa % 100:02d}e+{exponent}"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**80 else f"{_count(n // 2**30)} GiB"


def check_supernet_size(
    estimate: SizeEstimate,
    sizes: str,
    *,
    batch_size: int = 1,
    on_cpu: bool = False,
    memory: int | None = None,
    activations: bool = True,
    what: str = "the supernet",
    typical: str = "the DARTS search supernet: C=16, 8 cells, 4 nodes",
) -> None:
    """Raise :class:`~fastnas.errors.ConfigError` when a supernet of lower bound ``estimate`` cannot be
    built or run here: more weights and module objects than the machine's memory (``memory``, default
    :func:`machine_memory`; with ``on_cpu`` also gradients, momentum and one batch's feature maps), or a
    tensor of more than :data:`MAX_TENSOR_ELEMENTS` elements. ``sizes`` names the options in the
    message (``"--C 16, --layers 8, --nodes 4"``). Without ``activations`` (the image size is not known)
    only the weights and modules are checked. ``what`` names the network (``"the evaluation network"``),
    ``typical`` its usual sizes."""
    fix = f"{what} of {sizes}"
    advice = f"choose smaller sizes ({typical})"
    memory = machine_memory() if memory is None else memory
    host = _FP32 * estimate.parameters + MODULE_BYTES * estimate.modules
    if memory is not None and host > memory:
        raise ConfigError(
            f"{fix} would hold at least {_count(estimate.parameters)} weights and {_count(estimate.modules)} "
            f"modules ({_gib(host)}), more than the {_gib(memory)} of memory of this machine; {advice}"
        )
    if estimate.largest_weight > MAX_TENSOR_ELEMENTS:
        raise ConfigError(
            f"{fix} would have a weight tensor of at least {_count(estimate.largest_weight)} elements, more "
            f"than the {MAX_TENSOR_ELEMENTS:,} (2^31) one tensor may hold; {advice}"
        )
    if not activations:
        return
    batch_map = batch_size * estimate.largest_activation
    if batch_map > MAX_TENSOR_ELEMENTS:
        raise ConfigError(
            f"{fix} would compute, for a batch of {batch_size} images, a feature map of at least "
            f"{_count(batch_map)} values ({_count(estimate.largest_activation)} per image), more than the "
            f"{MAX_TENSOR_ELEMENTS:,} (2^31) one tensor may hold; {advice}, or a smaller batch"
        )
    if on_cpu and memory is not None:
        total = host + _FP32 * (2 * estimate.parameters + batch_size * estimate.activations)
        if total > memory:
            raise ConfigError(
                f"{fix} would need at least {_gib(total)} on this CPU run (weights, gradients, momentum "
                f"and the feature maps of a batch of {batch_size}: {_count(estimate.activations)} values per "
                f"image), more than the {_gib(memory)} of memory of this machine; {advice}, or a smaller "
                "batch"
            )
