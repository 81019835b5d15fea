"""The seed-004 thesis ops (sections 3.4.1 and 3.4.2, REFERENCE.md section 9): definitions, parameter
counts by hand, gradients, the fused-edge split, and use in a supernet, an evaluation network and
genotypes.

Every expected structure and number below is written from the definitions, not produced by the ops:
a *block* is ReLU -> depthwise Conv(k, stride, padding, dilation, groups=C_in) -> pointwise 1x1
(C_in -> C_out) -> BN(C_out).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnas
from fastnas.backend import force_reference
from fastnas.info import network_info
from fastnas.kernels._common import kernels_in_cpu_models
from fastnas.nn import MixedEdge
from fastnas.nn.fused_edge import split_final_bn
from fastnas.ops import (
    DARTS_OPS,
    THESIS_EXTRA_OPS,
    THESIS_OPS,
    DeepSepConv,
    DilSepConv,
    DoubleDilConv,
    available_ops,
    build_op,
    get_op_spec,
)

NEW_OPS = (
    "dil_conv_3x3_dd",
    "dil_conv_5x5_dd",
    "dil_sep_conv_3x3_dc",
    "dil_sep_conv_5x5_dc",
    "deep_sep_conv_3x3",
    "deep_sep_conv_5x5",
)

# One block as (c_in, c_out, kernel, stride, padding, dilation); "s" is the op's stride.
Block = tuple[int, int, int, int, int, int]


def expected_blocks(name: str, c: int, s: int) -> list[Block]:
    """The blocks of op ``name`` for C=c channels and stride s, from the definitions (see the module docs)."""
    k = 5 if "5x5" in name else 3
    dil_pad = {3: 2, 5: 4}[k]  # the DARTS DilConv paddings
    if name.endswith("_dd"):  # DilConv twice, the second unstrided
        return [(c, c, k, s, dil_pad, 2), (c, c, k, 1, dil_pad, 2)]
    if name.endswith("_dc"):  # DilConv, then one separable block with the same kernel
        return [(c, c, k, s, dil_pad, 2), (c, c, k, 1, k // 2, 1)]
    h = c // 2  # deep sep: two SepConvs = four separable blocks, C -> C/2 ... C/2 -> C
    p = k // 2
    return [(c, h, k, s, p, 1), (h, h, k, 1, p, 1), (h, h, k, 1, p, 1), (h, c, k, 1, p, 1)]


# Parameter counts for C=8, by hand. A block (c_in, c_out, k) has k*k*c_in (depthwise) + c_in*c_out
# (pointwise) weights, plus 2*c_out BN parameters when affine.
#   DD/DC k=3: 2 * (9*8 + 8*8 + 2*8) = 2 * (72 + 64 + 16) = 304; without affine 2 * (72 + 64) = 272
#   DD/DC k=5: 2 * (25*8 + 8*8 + 2*8) = 2 * (200 + 64 + 16) = 560; without affine 2 * 264 = 528
#   deep sep k=3 (C/2 = 4): (72 + 8*4 + 2*4) + 2 * (9*4 + 4*4 + 2*4) + (9*4 + 4*8 + 2*8)
#                           = 112 + 2 * 60 + 84 = 316; without affine 316 - (8 + 8 + 8 + 16) = 276
#   deep sep k=5: (200 + 32 + 8) + 2 * (25*4 + 16 + 8) + (100 + 32 + 16) = 240 + 248 + 148 = 636;
#                 without affine 636 - 40 = 596
HAND_PARAMS_C8 = {
    ("dil_conv_3x3_dd", True): 304,
    ("dil_conv_3x3_dd", False): 272,
    ("dil_conv_5x5_dd", True): 560,
    ("dil_conv_5x5_dd", False): 528,
    ("dil_sep_conv_3x3_dc", True): 304,
    ("dil_sep_conv_3x3_dc", False): 272,
    ("dil_sep_conv_5x5_dc", True): 560,
    ("dil_sep_conv_5x5_dc", False): 528,
    ("deep_sep_conv_3x3", True): 316,
    ("deep_sep_conv_3x3", False): 276,
    ("deep_sep_conv_5x5", True): 636,
    ("deep_sep_conv_5x5", False): 596,
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_op_lists_and_registration() -> None:
    assert THESIS_EXTRA_OPS == NEW_OPS
    assert (*DARTS_OPS, *NEW_OPS) == THESIS_OPS
    assert len(THESIS_OPS) == 14
    darts = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
    darts += ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert THESIS_OPS[:8] == darts
    for name in NEW_OPS:
        assert name in available_ops()
        assert get_op_spec(name).kind == "conv"
    assert isinstance(build_op("dil_conv_3x3_dd", 4, 1, True), DoubleDilConv)
    assert isinstance(build_op("dil_sep_conv_5x5_dc", 4, 1, True), DilSepConv)
    assert isinstance(build_op("deep_sep_conv_3x3", 4, 1, True), DeepSepConv)


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_output_shape(name: str, stride: int, affine: bool) -> None:
    op = build_op(name, 8, stride, affine)
    assert op(torch.randn(2, 8, 8, 8)).shape == (2, 8, 8 // stride, 8 // stride)
    # odd sizes: kept at stride 1, ceil(9 / 2) = 5 at stride 2 (as every DARTS conv op)
    assert op(torch.randn(2, 8, 9, 9)).shape == (2, 8, 9 if stride == 1 else 5, 9 if stride == 1 else 5)


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("affine", [True, False])
def test_parameter_count_by_hand(name: str, affine: bool) -> None:
    for stride in (1, 2):  # the stride changes no parameter
        assert _count(build_op(name, 8, stride, affine)) == HAND_PARAMS_C8[(name, affine)]


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_module_structure(name: str, stride: int, affine: bool) -> None:
    """Leaf modules in order: (ReLU, depthwise, pointwise, BN) per block, hyper-parameters as defined."""
    c = 8
    op = build_op(name, c, stride, affine)
    leaves = [m for m in op.modules() if not list(m.children())]
    blocks = expected_blocks(name, c, stride)
    assert len(leaves) == 4 * len(blocks)
    for i, (c_in, c_out, k, s, p, d) in enumerate(blocks):
        relu, dw, pw, bn = leaves[4 * i : 4 * i + 4]
        assert isinstance(relu, nn.ReLU) and not relu.inplace
        assert isinstance(dw, nn.Conv2d) and isinstance(pw, nn.Conv2d)
        assert (dw.in_channels, dw.out_channels, dw.groups) == (c_in, c_in, c_in)
        assert dw.kernel_size == (k, k) and dw.stride == (s, s)
        assert dw.padding == (p, p) and dw.dilation == (d, d)
        assert (pw.in_channels, pw.out_channels, pw.kernel_size, pw.stride) == (c_in, c_out, (1, 1), (1, 1))
        assert pw.groups == 1 and pw.padding == (0, 0)
        assert dw.bias is None and pw.bias is None
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_out and bn.affine == affine
    strided = [m for m in op.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(strided) == (1 if stride == 2 else 0)


def _reference_forward(op: nn.Module, blocks: list[Block], x: torch.Tensor) -> torch.Tensor:
    """The op computed functionally from the definitions, with the op's weights (BNs in training mode)."""
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    for i, (c_in, _, _, s, p, d) in enumerate(blocks):
        x = F.relu(x)
        x = F.conv2d(x, convs[2 * i].weight, stride=s, padding=p, dilation=d, groups=c_in)
        x = F.conv2d(x, convs[2 * i + 1].weight)
        bn = bns[i]
        x = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    return x


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_matches_definition(name: str, stride: int, affine: bool) -> None:
    torch.manual_seed(0)
    op = build_op(name, 8, stride, affine)
    if affine:  # non-trivial BN parameters, so their place in the chain matters
        with torch.no_grad():
            for m in op.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(op(x), _reference_forward(op, expected_blocks(name, 8, stride), x))


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_reach_input_and_every_parameter(name: str, stride: int, affine: bool) -> None:
    torch.manual_seed(1)
    op = build_op(name, 8, stride, affine)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    out = op(x)
    (out * torch.randn_like(out)).sum().backward()
    grads = {"input": x.grad, **{n: p.grad for n, p in op.named_parameters()}}
    assert len(grads) == 1 + len(list(op.parameters()))
    for where, g in grads.items():
        assert g is not None, where
        assert torch.isfinite(g).all(), where
        assert g.abs().sum() > 0, where


def test_input_is_not_modified_in_place() -> None:
    x = torch.randn(2, 8, 8, 8)
    before = x.clone()
    for name in NEW_OPS:
        build_op(name, 8, 1, True)(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("channels", [7, 5, 1])
@pytest.mark.parametrize("name", ["deep_sep_conv_3x3", "deep_sep_conv_5x5"])
def test_deep_sep_conv_needs_even_channels(name: str, channels: int) -> None:
    with pytest.raises(ValueError, match="even"):
        build_op(name, channels, 1, True)


@pytest.mark.parametrize("name", NEW_OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_final_bn_split(name: str, stride: int) -> None:
    """In the supernet (affine off, training mode) op == final_bn(pre_bn(x)) and the fused edge finds it."""
    op = build_op(name, 8, stride, affine=False)
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    split = split_final_bn(op)
    assert split is not None
    pre_bn, bn = split
    assert bn is bns[-1]
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(bn(pre_bn(x)), op(x))
    assert split_final_bn(build_op(name, 8, stride, affine=True)) is None  # affine BNs do not fold


@pytest.mark.parametrize("stride", [1, 2])
def test_folded_edge_matches_reference(stride: int) -> None:
    torch.manual_seed(stride)
    reference = MixedEdge(4, stride, THESIS_OPS)
    folded = copy.deepcopy(reference)
    assert folded.fold_plan is not None
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 6, generator=gen)
    w = torch.softmax(torch.randn(len(THESIS_OPS), generator=gen), 0)
    g = torch.randn(2, 4, 6 // stride, 6 // stride, generator=gen)
    results = []
    for edge, fused in ((reference, False), (folded, True)):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        with force_reference(True), kernels_in_cpu_models(False):
            out = edge.forward_folded(xs, ws) if fused else edge.forward_reference(xs, ws)
        out.backward(g)
        results.append((out.detach(), xs.grad, ws.grad, [p.grad.clone() for p in edge.parameters()]))
    (out, gx, gw, gp), (rout, rgx, rgw, rgp) = results[1], results[0]
    tol = {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(out, rout, **tol)
    torch.testing.assert_close(gx, rgx, **tol)
    torch.testing.assert_close(gw, rgw, **tol)
    for a, b in zip(gp, rgp, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_search_supernet_with_thesis_ops() -> None:
    torch.manual_seed(0)
    model = fastnas.SearchModel.build(
        "darts", space=fastnas.DartsSpace(ops=THESIS_OPS), C=4, layers=3, num_classes=3
    )
    logits = model(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    built = {type(m) for m in model.modules()}
    assert {DoubleDilConv, DilSepConv, DeepSepConv} <= built
    assert all(len(a) and a.shape[-1] == 14 for a in model.arch_parameters())
    genotype = fastnas.load_genotype(model.genotype().to_literal())
    assert {op for cell in (*genotype.normal_cells, genotype.reduce_cell) for op in cell.ops_used()} <= set(
        THESIS_OPS
    )


# Each new op appears in the normal cell (stride 1) and on a cell input of the reduction cell (stride 2).
THESIS_GENOTYPE_LITERAL = (
    "Genotype(normal=[('dil_conv_3x3_dd', 0), ('dil_conv_5x5_dd', 1), ('dil_sep_conv_3x3_dc', 0), "
    "('dil_sep_conv_5x5_dc', 1), ('deep_sep_conv_3x3', 0), ('deep_sep_conv_5x5', 2), ('sep_conv_3x3', 1), "
    "('skip_connect', 3)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('deep_sep_conv_5x5', 0), ('deep_sep_conv_3x3', 1), ('dil_sep_conv_5x5_dc', 0), "
    "('dil_sep_conv_3x3_dc', 1), ('dil_conv_5x5_dd', 0), ('dil_conv_3x3_dd', 1), ('max_pool_3x3', 0), "
    "('dil_conv_3x3', 4)], reduce_concat=[2, 3, 4, 5])"
)


def _thesis_genotype() -> fastnas.Genotype:
    return fastnas.Genotype(
        normal=[
            ("dil_conv_3x3_dd", 0),
            ("dil_conv_5x5_dd", 1),
            ("dil_sep_conv_3x3_dc", 0),
            ("dil_sep_conv_5x5_dc", 1),
            ("deep_sep_conv_3x3", 0),
            ("deep_sep_conv_5x5", 2),
            ("sep_conv_3x3", 1),
            ("skip_connect", 3),
        ],
        normal_concat=[2, 3, 4, 5],
        reduce=[
            ("deep_sep_conv_5x5", 0),
            ("deep_sep_conv_3x3", 1),
            ("dil_sep_conv_5x5_dc", 0),
            ("dil_sep_conv_3x3_dc", 1),
            ("dil_conv_5x5_dd", 0),
            ("dil_conv_3x3_dd", 1),
            ("max_pool_3x3", 0),
            ("dil_conv_3x3", 4),
        ],
        reduce_concat=[2, 3, 4, 5],
    )


def test_load_genotype_accepts_thesis_ops() -> None:
    genotype = fastnas.load_genotype(THESIS_GENOTYPE_LITERAL)
    assert genotype == _thesis_genotype()
    assert fastnas.load_genotype(genotype.to_literal()) == genotype
    with pytest.raises(fastnas.GenotypeError):
        fastnas.load_genotype(THESIS_GENOTYPE_LITERAL.replace("deep_sep_conv_3x3", "deep_sep_conv_4x4"))


def test_evaluation_network_with_thesis_ops() -> None:
    torch.manual_seed(0)
    genotype = _thesis_genotype()
    net = fastnas.NetworkCIFAR(8, 10, 5, False, genotype)
    built = [type(m) for m in net.modules()]
    for cls in (DoubleDilConv, DilSepConv, DeepSepConv):
        assert built.count(cls) == 2 * 3 + 2 * 2  # 2 ops each in 3 normal cells, 2 in each of 2 reductions
    thesis_modules = [m for m in net.modules() if isinstance(m, (DoubleDilConv, DilSepConv, DeepSepConv))]
    assert all(m.final_bn.affine for m in thesis_modules)
    net.eval()
    logits = net(torch.randn(2, 3, 32, 32))
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()

    for source in (genotype, THESIS_GENOTYPE_LITERAL):
        info = network_info(source, "cifar10", C=8, layers=5)
        assert info["parameters"] > 0 and info["flops_per_image"] > 0
        assert info["parameters"] == sum(p.numel() for p in net.parameters())
