"""The NAS-Bench-201 convolutions (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020).

``none``, ``skip_connect`` and ``avg_pool_3x3`` are the ops the DARTS module already registers
(zero, identity at stride 1, 3x3 average pooling without padded zeros), as NAS-Bench-201 defines
them; this module adds ``nor_conv_1x1`` and ``nor_conv_3x3``: ReLU -> Conv(k, stride, padding k//2,
no bias) -> BN.
"""

from __future__ import annotations

from torch import nn

from fastnas.nb201.arch import NB201_OPS
from fastnas.ops.darts_ops import ReLUConvBN
from fastnas.ops.registry import register_op

__all__ = ["NB201_OPS"]


@register_op("nor_conv_1x1", "conv")
def _nor_conv_1x1(c: int, stride: int, affine: bool) -> nn.Module:
    return ReLUConvBN(c, c, 1, stride, 0, affine=affine)


@register_op("nor_conv_3x3", "conv")
def _nor_conv_3x3(c: int, stride: int, affine: bool) -> nn.Module:
    return ReLUConvBN(c, c, 3, stride, 1, affine=affine)
