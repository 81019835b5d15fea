"""The ops of the DARTS / P-DARTS thesis (Paganucci, "Efficient ConvNet Architectures: Differentiable Neural
Architecture Search", semester thesis, ETH Zurich, 2020; sections 3.4.1 and 3.4.2).

Every op maps C channels to C channels, every conv is bias-free, every ReLU out of place, every BN
follows ``affine``, and only the first depthwise conv of an op carries the stride. A *block* below is
one :class:`~fastnas.ops.darts_ops.DilConv` module: ReLU -> depthwise Conv(k, stride, padding,
dilation, groups=C_in) -> pointwise 1x1 Conv(C_in -> C_out) -> BN(C_out); with dilation 1 it is one
separable block of the DARTS ``SepConv``.

Balanced dilated convolutions (Paganucci, 2020, section 3.4.1: the DARTS dilated conv is one block deep,
the separable conv two, which "may lead to an advantage or disadvantage for one of them during
architecture search"):

- ``dil_conv_3x3_dd``, ``dil_conv_5x5_dd`` ("DD", :class:`DoubleDilConv`): "performing the same block
  of logical operations of dilated convolution two times": dilated block (k, stride s, padding
  2 (k=3) / 4 (k=5), dilation 2), then the same block with stride 1.
- ``dil_sep_conv_3x3_dc``, ``dil_sep_conv_5x5_dc`` ("DC", :class:`DilSepConv`, the sharpDARTS-like
  variant): "a block of regular, separable convolution after the dilated convolution block": the
  dilated block (stride s, dilation 2), then *one* separable block with the same kernel k (stride 1,
  padding k//2, dilation 1). fastnas reads "a block of regular, separable convolution" as one
  separable block (not a whole two-block ``SepConv``), which makes DC exactly two blocks deep like
  ``SepConv`` and DD, the balance the thesis is after.

The new op (Paganucci, 2020, section 3.4.2, :class:`DeepSepConv`):

- ``deep_sep_conv_3x3``, ``deep_sep_conv_5x5``: "deep separable convolution performs 2 separable
  convolutions in a row ... we thus halve the channel-sizes of intermediate operations (Halve channels
  at first 1x1 convolution, double at last 1x1 convolution for final output)". fastnas reads "2
  separable convolutions" as two whole DARTS ``SepConv`` ops, i.e. four separable blocks: block 1
  dw(C) pw C->C/2 BN(C/2); blocks 2 and 3 dw(C/2) pw C/2->C/2 BN(C/2); block 4 dw(C/2) pw C/2->C
  BN(C). C must be even. The other reading ("two separable blocks") would be a single
  ``SepConv`` with a halved middle: dw(C) pw C->C/2 BN(C/2), dw(C/2) pw C/2->C BN(C); it is not
  implemented. The four-block reading follows "performs 2 separable convolutions in a row" after
  section 3.4.1, where "separable convolution" names the two-block DARTS op, and is the only one
  that makes the op deeper than ``sep_conv`` (the point of section 3.4.2).

Each op is an ``nn.Sequential`` of ``DilConv`` blocks that exposes ``final_bn`` and ``pre_bn(x)`` like
``SepConv``, so :func:`fastnas.nn.fused_edge.split_final_bn` can fold its last BN into a mixed edge.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from fastnas.ops.darts_ops import DARTS_OPS, DilConv
from fastnas.ops.registry import register_op

THESIS_EXTRA_OPS: tuple[str, ...] = (
    "dil_conv_3x3_dd",
    "dil_conv_5x5_dd",
    "dil_sep_conv_3x3_dc",
    "dil_sep_conv_5x5_dc",
    "deep_sep_conv_3x3",
    "deep_sep_conv_5x5",
)
"""The six ops the thesis adds, in their column order after the DARTS ops."""

THESIS_OPS: tuple[str, ...] = (*DARTS_OPS, *THESIS_EXTRA_OPS)
"""The thesis space: the 8 DARTS ops followed by the 6 thesis ops (14 columns)."""


def _dil_padding(kernel: int) -> int:
    """The padding of the DARTS dilated conv (dilation 2): 2 for k=3, 4 for k=5 (``kernel - 1``)."""
    return kernel - 1


class _Blocks(nn.Sequential):
    """A chain of :class:`DilConv` blocks; the last block's BN is the op's final BN."""

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return cast(DilConv, self[-1]).final_bn

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the final BN."""
        *head, last = list(self)
        for block in head:
            x = block(x)
        return cast(DilConv, last).pre_bn(x)


class DoubleDilConv(_Blocks):
    """DD: the dilated block (stride s, dilation 2) twice, the second with stride 1."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool = True):
        pad = _dil_padding(kernel)
        super().__init__(
            DilConv(channels, channels, kernel, stride, pad, dilation=2, affine=affine),
            DilConv(channels, channels, kernel, 1, pad, dilation=2, affine=affine),
        )


class DilSepConv(_Blocks):
    """DC: the dilated block (stride s, dilation 2), then one separable block (k, stride 1, dilation 1)."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool = True):
        super().__init__(
            DilConv(channels, channels, kernel, stride, _dil_padding(kernel), dilation=2, affine=affine),
            DilConv(channels, channels, kernel, 1, kernel // 2, dilation=1, affine=affine),
        )


class DeepSepConv(_Blocks):
    """Two SepConv ops in a row (four separable blocks), channels C -> C/2 -> C/2 -> C/2 -> C."""

    def __init__(self, channels: int, kernel: int, stride: int, affine: bool = True):
        if channels < 2 or channels % 2:
            raise ValueError(
                f"deep_sep_conv halves the channels at its first 1x1 conv and needs an even channel count "
                f">= 2, got {channels}"
            )
        half, pad = channels // 2, kernel // 2
        super().__init__(
            DilConv(channels, half, kernel, stride, pad, dilation=1, affine=affine),
            DilConv(half, half, kernel, 1, pad, dilation=1, affine=affine),
            DilConv(half, half, kernel, 1, pad, dilation=1, affine=affine),
            DilConv(half, channels, kernel, 1, pad, dilation=1, affine=affine),
        )


@register_op("dil_conv_3x3_dd", "conv")
def _dil3_dd(c: int, stride: int, affine: bool) -> nn.Module:
    return DoubleDilConv(c, 3, stride, affine=affine)


@register_op("dil_conv_5x5_dd", "conv")
def _dil5_dd(c: int, stride: int, affine: bool) -> nn.Module:
    return DoubleDilConv(c, 5, stride, affine=affine)


@register_op("dil_sep_conv_3x3_dc", "conv")
def _dil_sep3_dc(c: int, stride: int, affine: bool) -> nn.Module:
    return DilSepConv(c, 3, stride, affine=affine)


@register_op("dil_sep_conv_5x5_dc", "conv")
def _dil_sep5_dc(c: int, stride: int, affine: bool) -> nn.Module:
    return DilSepConv(c, 5, stride, affine=affine)


@register_op("deep_sep_conv_3x3", "conv")
def _deep_sep3(c: int, stride: int, affine: bool) -> nn.Module:
    return DeepSepConv(c, 3, stride, affine=affine)


@register_op("deep_sep_conv_5x5", "conv")
def _deep_sep5(c: int, stride: int, affine: bool) -> nn.Module:
    return DeepSepConv(c, 5, stride, affine=affine)
