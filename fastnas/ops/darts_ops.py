"""The eight DARTS candidate operations and their building blocks (Liu, Simonyan & Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019, and its public code).

All convolutions are bias-free and every ReLU is out of place. ``affine`` switches the BN
affine parameters: off in the search supernet, on in evaluation networks.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fastnas.kernels._common import model_uses_kernels
from fastnas.kernels.depthwise_conv import relu_depthwise_conv
from fastnas.ops.registry import register_op


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k, stride, padding) -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise Conv(k, stride, padding, dilation) -> pointwise 1x1 -> BN.

    On tensors the fused kernels support (CUDA), the ReLU runs inside the depthwise convolution
    (:func:`fastnas.kernels.depthwise_conv.relu_depthwise_conv`).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=c_in, bias=False
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self[3]  # type: ignore[return-value]

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the final BN."""
        depthwise, pointwise = cast(nn.Conv2d, self[1]), self[2]
        if not model_uses_kernels(x):
            return pointwise(depthwise(self[0](x)))
        dtype = autocast_dtype(x)
        c, k = depthwise.in_channels, depthwise.kernel_size[0]
        weight = depthwise.weight.view(1, c, k, k).to(dtype)
        h = relu_depthwise_conv(x.to(dtype), weight, *depthwise_conv_args(depthwise))
        return pointwise(h[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_bn(self.pre_bn(x))


class SepConv(nn.Sequential):
    """Two stacked separable blocks; only the first depthwise conv is strided (as in the DARTS code)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, dilation=1, affine=affine),
            DilConv(c_in, c_out, kernel, 1, padding, dilation=1, affine=affine),
        )

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self[1].final_bn  # type: ignore[return-value]

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the final BN."""
        return self[1].pre_bn(self[0](x))  # type: ignore[operator]


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` computes in (the autocast dtype inside an autocast region)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def depthwise_conv_args(conv: nn.Conv2d) -> tuple[int, int, int]:
    """``(stride, padding, dilation)`` of the (square, symmetric) depthwise ``conv`` of a ``DilConv``, the
    ints :func:`~fastnas.kernels.depthwise_conv.relu_depthwise_conv` takes. A padding mode (``"same"``,
    ``"valid"``) has no fused form: ``TypeError``."""
    padding = conv.padding
    if isinstance(padding, str):
        raise TypeError(
            f"relu_depthwise_conv: the depthwise conv has padding mode {padding!r}; the fused kernel takes "
            "an int padding (build the conv with `padding=<int>`)."
        )
    return conv.stride[0], padding[0], conv.dilation[0]


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op: a zero tensor with the (possibly strided) output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, then two 1x1 stride-2 convs (the second on ``x[:, :, 1:, 1:]``) concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the final BN (the fused mixed edge folds that BN into its sum)."""
        x = self.relu(x)
        return torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pre_bn(x))


DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The DARTS ``PRIMITIVES`` in their index order; genotypes and alpha columns use this order."""


@register_op("none", "zero")
def _none(c: int, stride: int, affine: bool) -> nn.Module:
    return Zero(stride)


@register_op("max_pool_3x3", "pool")
def _max_pool(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@register_op("avg_pool_3x3", "pool")
def _avg_pool(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@register_op("skip_connect", "skip")
def _skip(c: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)


@register_op("sep_conv_3x3", "conv")
def _sep3(c: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(c, c, 3, stride, 1, affine=affine)


@register_op("sep_conv_5x5", "conv")
def _sep5(c: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(c, c, 5, stride, 2, affine=affine)


@register_op("dil_conv_3x3", "conv")
def _dil3(c: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(c, c, 3, stride, 2, dilation=2, affine=affine)


@register_op("dil_conv_5x5", "conv")
def _dil5(c: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(c, c, 5, stride, 4, dilation=2, affine=affine)
