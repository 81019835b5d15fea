"""The extra candidate ops of the extended EnTranNAS space (Yang, You, Li, Wang, Qian & Lin, "Towards
Improving the Consistency, Efficiency, and Flexibility of Differentiable Neural Architecture Search",
CVPR 2021; section 4.2 and Table 8).

Yang et al. (CVPR 2021), section 4.2: "The extended version additionally has 5 more operations, which
are 1x1 convolution, 3x3 convolution, 1x3 then 3x1 convolution, 1x5 then 5x1 convolution, and 1x7 then
7x1 convolution." They
follow the ReLU-conv-BN style of the DARTS ops (every conv bias-free, ReLU out of place):

- ``conv_1x1``: ReLU -> Conv(1x1, stride s) -> BN.
- ``conv_3x3``: ReLU -> Conv(3x3, stride s, padding 1) -> BN.
- ``conv_1xk_kx1`` (k = 3, 5, 7): ReLU -> Conv(1xk, stride (1, s), padding (0, k//2)) ->
  Conv(kx1, stride (s, 1), padding (k//2, 0)) -> BN (the factorised conv of the NASNet/DARTS
  ``conv_7x1_1x7``: the stride is split between the two convs, one BN at the end).
"""

from __future__ import annotations

from torch import nn

from fastnas.ops.darts_ops import DARTS_OPS, ReLUConvBN
from fastnas.ops.registry import register_op

EXTRA_OPS: tuple[str, ...] = ("conv_1x1", "conv_3x3", "conv_1x3_3x1", "conv_1x5_5x1", "conv_1x7_7x1")
"""The five ops the extended space adds, in their column order after the DARTS ops."""

EXTENDED_OPS: tuple[str, ...] = (*DARTS_OPS, *EXTRA_OPS)
"""The extended space: the 8 DARTS ops (``none`` included, as in the DARTS search) + the 5 extra ops = 13.
Yang et al. (CVPR 2021) count 12 ("7 + 5", they never count ``none``); EnTranNAS-DST drops ``none`` and
searches 12."""


class FactorizedConv(nn.Sequential):
    """ReLU -> Conv(1 x k, stride (1, s)) -> Conv(k x 1, stride (s, 1)) -> BN."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool = True):
        pad = kernel // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, (1, kernel), stride=(1, stride), padding=(0, pad), bias=False),
            nn.Conv2d(channels, channels, (kernel, 1), stride=(stride, 1), padding=(pad, 0), bias=False),
            nn.BatchNorm2d(channels, affine=affine),
        )


@register_op("conv_1x1", "conv")
def _conv_1x1(c: int, stride: int, affine: bool) -> nn.Module:
    return ReLUConvBN(c, c, 1, stride, 0, affine=affine)


@register_op("conv_3x3", "conv")
def _conv_3x3(c: int, stride: int, affine: bool) -> nn.Module:
    return ReLUConvBN(c, c, 3, stride, 1, affine=affine)


@register_op("conv_1x3_3x1", "conv")
def _conv_1x3_3x1(c: int, stride: int, affine: bool) -> nn.Module:
    return FactorizedConv(c, 3, stride, affine=affine)


@register_op("conv_1x5_5x1", "conv")
def _conv_1x5_5x1(c: int, stride: int, affine: bool) -> nn.Module:
    return FactorizedConv(c, 5, stride, affine=affine)


@register_op("conv_1x7_7x1", "conv")
def _conv_1x7_7x1(c: int, stride: int, affine: bool) -> nn.Module:
    return FactorizedConv(c, 7, stride, affine=affine)
