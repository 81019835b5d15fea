"""Search spaces: what can be searched (op names, node count, cell types, edges). Data only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastnas.errors import ConfigError
from fastnas.nb201.arch import NB201_OPS
from fastnas.ops import DARTS_OPS, EXTENDED_OPS, THESIS_OPS, get_op_spec
from fastnas.spaces.base import SearchSpace, SpaceEdge
from fastnas.spaces.darts import DartsSpace, Edge
from fastnas.spaces.nb201 import NB201Edge, NB201Space

SPACE_NAMES: tuple[str, ...] = ("darts", "darts-extended", "nb201")

#: Supernet sizes that differ from a method's defaults on a given space (``layers`` = cells per stage
#: on NAS-Bench-201, as in Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
#: Architecture Search", ICLR 2020).
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "darts": {},
    "darts-extended": {},
    "nb201": {"C": 16, "layers": 5},
}


OP_PRESETS: dict[str, tuple[str, ...]] = {
    "darts": DARTS_OPS,
    # the 8 DARTS ops + conv_1x1, conv_3x3, conv_1x3_3x1, conv_1x5_5x1, conv_1x7_7x1 (13 ops, ``none``
    # included; Yang et al., "Towards Improving the Consistency, Efficiency, and Flexibility of
    # Differentiable Neural Architecture Search", CVPR 2021, count 12 without it, and EnTranNAS-DST
    # drops ``none``)
    "darts-extended": EXTENDED_OPS,
    # the 8 DARTS ops + the ops of Paganucci, "Efficient ConvNet Architectures: Differentiable Neural
    # Architecture Search", semester thesis, ETH Zurich, 2020, section 3.4 (balanced dilated convs
    # DD / DC, deep separable convs)
    "thesis": THESIS_OPS,
    "nb201": NB201_OPS,
}
"""Named op lists for ``--ops``."""


def resolve_ops(spec: Sequence[str]) -> tuple[str, ...]:
    """``--ops``: one preset name (:data:`OP_PRESETS`) or op names; an unknown one is a clear error."""
    if len(spec) == 1 and spec[0] in OP_PRESETS:
        return OP_PRESETS[spec[0]]
    for op in spec:
        if op in OP_PRESETS:
            raise ConfigError(f"--ops takes one preset ({', '.join(OP_PRESETS)}) or op names, not both")
        get_op_spec(op)  # UnknownOpError names the known ops
    return tuple(spec)


def build_space(
    name: str = "darts",
    ops: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    **options: Any,
) -> DartsSpace | NB201Space:
    """Build a search space by name; ``ops`` (a preset name or op names) replaces its op list,
    ``exclude_ops`` removes ops from it, ``options`` are the space's other fields (``num_nodes=3``)."""
    if name not in SPACE_NAMES:
        raise ConfigError(f"unknown search space {name!r}; available: {', '.join(SPACE_NAMES)}")
    space_ops = resolve_ops(ops) if ops else OP_PRESETS[name]
    unknown = [op for op in exclude_ops if op not in space_ops]
    if unknown:
        raise ConfigError(f"--exclude-ops {', '.join(unknown)}: not in the space's ops {list(space_ops)}")
    space_ops = tuple(op for op in space_ops if op not in set(exclude_ops))
    if name == "nb201":
        return NB201Space(ops=space_ops, **options)
    return DartsSpace(**{"ops": space_ops, "name": name, **options})


__all__ = [
    "OP_PRESETS",
    "SPACE_DEFAULTS",
    "SPACE_NAMES",
    "DartsSpace",
    "Edge",
    "NB201Edge",
    "NB201Space",
    "SearchSpace",
    "SpaceEdge",
    "build_space",
    "resolve_ops",
]
