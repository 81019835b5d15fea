"""Candidate operations (plain ``nn.Module`` reference semantics) and the op registry."""

from fastnas.ops import darts_ops as _darts_ops  # noqa: F401  (registers the DARTS ops)
from fastnas.ops import extended_ops as _extended_ops  # noqa: F401  (registers the extended-space ops)
from fastnas.ops import nb201_ops as _nb201_ops  # noqa: F401  (registers nor_conv_1x1 / nor_conv_3x3)
from fastnas.ops import thesis_ops as _thesis_ops  # noqa: F401  (registers the thesis ops)
from fastnas.ops.darts_ops import (
    DARTS_OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    SepConv,
    Zero,
)
from fastnas.ops.extended_ops import EXTENDED_OPS, EXTRA_OPS
from fastnas.ops.registry import (
    OpSpec,
    UnknownOpError,
    available_ops,
    build_op,
    get_op_spec,
    is_registered,
    register_op,
)
from fastnas.ops.thesis_ops import THESIS_EXTRA_OPS, THESIS_OPS, DeepSepConv, DilSepConv, DoubleDilConv

__all__ = [
    "DARTS_OPS",
    "EXTENDED_OPS",
    "EXTRA_OPS",
    "THESIS_EXTRA_OPS",
    "THESIS_OPS",
    "DeepSepConv",
    "DilConv",
    "DilSepConv",
    "DoubleDilConv",
    "FactorizedReduce",
    "Identity",
    "OpSpec",
    "ReLUConvBN",
    "SepConv",
    "UnknownOpError",
    "Zero",
    "available_ops",
    "build_op",
    "get_op_spec",
    "is_registered",
    "register_op",
]
