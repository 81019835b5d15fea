"""Candidate ops: definitions of REFERENCE.md section 1, output shapes and strides, the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastnas.ops import (
    DARTS_OPS,
    DilConv,
    FactorizedReduce,
    SepConv,
    UnknownOpError,
    available_ops,
    build_op,
    get_op_spec,
    register_op,
)


def test_darts_op_order() -> None:
    assert DARTS_OPS == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    assert set(DARTS_OPS) <= set(available_ops())


@pytest.mark.parametrize("name", DARTS_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 16])
def test_op_output_shape(name: str, stride: int, size: int) -> None:
    op = build_op(name, 6, stride, affine=False)
    x = torch.randn(3, 6, size, size)
    assert op(x).shape == (3, 6, size // stride, size // stride)


@pytest.mark.parametrize("name", [n for n in DARTS_OPS if n != "skip_connect"])
def test_stride_one_keeps_odd_sizes(name: str) -> None:
    op = build_op(name, 4, 1, affine=True)
    assert op(torch.randn(2, 4, 7, 9)).shape == (2, 4, 7, 9)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_sep_conv_definition() -> None:
    op = build_op("sep_conv_5x5", 8, 2, affine=True)
    assert isinstance(op, SepConv)
    convs = _convs(op)
    # depthwise(k, s=2), pointwise, depthwise(k, s=1), pointwise
    assert [c.kernel_size for c in convs] == [(5, 5), (1, 1), (5, 5), (1, 1)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert [c.groups for c in convs] == [8, 1, 8, 1]
    assert [c.padding for c in convs] == [(2, 2), (0, 0), (2, 2), (0, 0)]
    assert all(c.bias is None for c in convs)
    relus = [m for m in op.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 and not any(r.inplace for r in relus)
    # 2 x (8*25 depthwise + 8*8 pointwise) conv weights + 2 affine BNs of 8 channels
    assert sum(p.numel() for p in op.parameters()) == 2 * (8 * 25 + 64) + 2 * 16


def test_dil_conv_definition() -> None:
    op = build_op("dil_conv_3x3", 8, 1, affine=False)
    assert isinstance(op, DilConv)
    depthwise, pointwise = _convs(op)
    assert depthwise.dilation == (2, 2) and depthwise.padding == (2, 2) and depthwise.groups == 8
    assert pointwise.kernel_size == (1, 1)
    assert sum(p.numel() for p in op.parameters()) == 8 * 9 + 64  # BN affine=False has no parameters
    op5 = build_op("dil_conv_5x5", 8, 2, affine=False)
    assert _convs(op5)[0].padding == (4, 4) and _convs(op5)[0].stride == (2, 2)


def test_pooling_definitions() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(build_op("max_pool_3x3", 3, 2, False)(x), F.max_pool2d(x, 3, 2, 1))
    avg = build_op("avg_pool_3x3", 3, 1, False)(x)
    # count_include_pad=False: the corner averages the 4 real pixels only
    assert torch.allclose(avg[:, :, 0, 0], x[:, :, :2, :2].mean(dim=(2, 3)), atol=1e-6)


def test_skip_and_none() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(build_op("skip_connect", 4, 1, False)(x), x)
    assert isinstance(build_op("skip_connect", 4, 2, False), FactorizedReduce)
    zero = build_op("none", 4, 2, False)(x)
    assert zero.shape == (2, 4, 4, 4) and torch.count_nonzero(zero) == 0


def test_factorized_reduce_halves_use_offset_input() -> None:
    fr = FactorizedReduce(4, 6, affine=False).eval()
    x = torch.randn(1, 4, 8, 8)
    out = fr(x)
    manual_a = fr.bn(torch.cat([fr.conv_1(F.relu(x)), fr.conv_2(F.relu(x)[:, :, 1:, 1:])], 1))
    assert torch.allclose(out, manual_a)
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 5)


def test_unknown_op_error_names_known_ops() -> None:
    with pytest.raises(UnknownOpError, match="unknown op 'sep_conv_9x9'.*sep_conv_3x3"):
        build_op("sep_conv_9x9", 4, 1, False)


def test_registry_rejects_duplicates_and_accepts_new_ops() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_op("sep_conv_3x3", "conv")(lambda c, s, a: nn.Identity())
    register_op("test_conv_1x1", "conv")(lambda c, s, a: nn.Conv2d(c, c, 1, stride=s, bias=False))
    assert get_op_spec("test_conv_1x1").kind == "conv"
    assert build_op("test_conv_1x1", 4, 2, False)(torch.randn(1, 4, 8, 8)).shape == (1, 4, 4, 4)
