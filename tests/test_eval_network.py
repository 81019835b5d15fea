"""Evaluation networks (REFERENCE.md section 3): parameter counts, every zoo genotype, drop path, the
auxiliary head, flexible topologies, and `fastnas info --genotype / --list-genotypes`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fastnas import Genotype, GenotypeError
from fastnas.cli import main
from fastnas.genotype_zoo import ZOO_NAMES
from fastnas.nn import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    CellPlan,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    count_parameters_without_auxiliary,
    drop_path,
)
from fastnas.ops import FactorizedReduce, ReLUConvBN
from fastnas.train.retrain import training_loss

# Nodes with 1, 3, 2 and 1 inputs (EnTranNAS-DST style), concat of a subset; three normal-cell types.
FLEX_NORMAL = [
    [("sep_conv_3x3", 1)],
    [("skip_connect", 0), ("dil_conv_3x3", 1), ("avg_pool_3x3", 2)],
    [("sep_conv_5x5", 3), ("max_pool_3x3", 0)],
    [("dil_conv_5x5", 4)],
]
FLEX_REDUCE = [
    [("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 1)],
    [("skip_connect", 2)],
    [("avg_pool_3x3", 0), ("dil_conv_3x3", 3)],
]
FLEX = Genotype(
    normal=FLEX_NORMAL,
    normal_concat=[2, 3, 5],
    normal_2=[[("sep_conv_3x3", 0)], [("skip_connect", 2), ("sep_conv_3x3", 1)]],
    normal_3=[[("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 1)]],
    reduce=FLEX_REDUCE,
    reduce_concat=[2, 3, 4],
)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(
    ("name", "expected", "expected_with_aux"),
    [("DARTS_V2", 3_349_342, 3_825_768), ("DARTS_V1", 3_169_414, None)],
)
def test_cifar_parameter_counts(name: str, expected: int, expected_with_aux: int | None) -> None:
    model = NetworkCIFAR(36, 10, 20, True, name)
    assert count_parameters_without_auxiliary(model) == expected
    without_head = NetworkCIFAR(36, 10, 20, False, name)
    assert _params(without_head) == expected  # the DARTS name filter counts exactly the head
    if expected_with_aux is not None:
        assert _params(model) == expected_with_aux


@pytest.mark.parametrize(("name", "expected"), [("DARTS_V2", 4_718_752), ("DARTS_V1", 4_510_432)])
def test_imagenet_parameter_counts(name: str, expected: int) -> None:
    assert _params(NetworkImageNet(48, 1000, 14, False, name)) == expected
    assert count_parameters_without_auxiliary(NetworkImageNet(48, 1000, 14, True, name)) == expected


def test_published_sizes_of_other_zoo_genotypes() -> None:
    """REFERENCE.md section 3: PDARTS 3.4M, PC-DARTS 3.6M on CIFAR-10 (rounded published figures)."""
    for name, millions in (("PDARTS", 3.4), ("PC_DARTS_cifar", 3.6)):
        count = _params(NetworkCIFAR(36, 10, 20, False, name))
        assert round(count / 1e6, 1) == millions, (name, count)


def test_cell_layout_follows_the_darts_conventions() -> None:
    model = NetworkCIFAR(36, 10, 20, True, "DARTS_V2")
    reductions = [i for i, cell in enumerate(model.cells) if cell.reduction]
    assert reductions == [6, 13]
    assert isinstance(model.cells[7].preprocess0, FactorizedReduce)  # after a reduction
    assert isinstance(model.cells[0].preprocess0, ReLUConvBN)
    assert isinstance(model.cells[7].preprocess1, ReLUConvBN)
    assert all(m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.stem[0].out_channels == 108 and model.classifier.in_features == 4 * 4 * 36
    imagenet = NetworkImageNet(48, 1000, 14, False, "DARTS_V2")
    assert isinstance(imagenet.cells[0].preprocess0, FactorizedReduce)  # reduction_prev at the start
    assert [i for i, c in enumerate(imagenet.cells) if c.reduction] == [4, 9]


# ------------------------------------------------------------------------------------------ forwards


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_genotype_runs_on_cifar_and_imagenet_inputs(name: str) -> None:
    torch.manual_seed(0)
    cifar = NetworkCIFAR(8, 10, 5, True, name).train()
    cifar.drop_path_prob = 0.2
    logits, aux = cifar(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    cifar.eval()
    with torch.no_grad():
        logits, aux = cifar(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux is None
    imagenet = NetworkImageNet(8, 7, 5, True, name).train()
    logits, aux = imagenet(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux is not None and aux.shape == (2, 7)


def test_auxiliary_heads_output_shapes() -> None:
    head = AuxiliaryHeadCIFAR(20, 10)
    assert head(torch.randn(3, 20, 8, 8)).shape == (3, 10)
    head_in = AuxiliaryHeadImageNet(20, 1000)
    assert head_in(torch.randn(3, 20, 7, 7)).shape == (3, 1000)
    assert head(torch.randn(3, 20, 2, 2)).shape == (3, 10)  # tiny inputs (8x8 digits) pool adaptively
    # 8x8 -> AvgPool 5 stride 3 -> 2x2 -> conv 2x2 -> 1x1 x 768 channels
    conv768 = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
    assert conv768.out_channels == 768 and conv768.kernel_size == (2, 2)


def test_training_loss_is_main_plus_weighted_auxiliary_cross_entropy() -> None:
    torch.manual_seed(1)
    logits, aux, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))

    def nll(z: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        logp = z.log_softmax(1)
        hard = -logp[torch.arange(len(y)), y]
        return ((1 - smoothing) * hard - smoothing * logp.mean(1)).mean()

    assert torch.allclose(training_loss(logits, aux, y, 0.4), nll(logits) + 0.4 * nll(aux))
    assert torch.allclose(training_loss(logits, None, y, 0.4), nll(logits))
    assert torch.allclose(
        training_loss(logits, aux, y, 0.4, label_smoothing=0.1), nll(logits, 0.1) + 0.4 * nll(aux, 0.1)
    )


# ------------------------------------------------------------------------------------------ drop path


def test_drop_path_zero_probability_is_the_identity() -> None:
    x = torch.randn(5, 3, 4, 4)
    assert drop_path(x, 0.0) is x
    torch.manual_seed(0)
    model = NetworkCIFAR(8, 10, 5, False, "DARTS_V2").train()
    x = torch.randn(4, 3, 32, 32)
    model.drop_path_prob = 0.0
    first, _ = model(x)
    second, _ = model(x)
    assert torch.equal(first, second)
    model.drop_path_prob = 0.5
    dropped, _ = model(x)
    assert not torch.allclose(first, dropped)
    model.eval()  # no drop path in eval mode
    with torch.no_grad():
        assert torch.equal(model(x)[0], model(x)[0])


def test_drop_path_zeroes_about_p_of_the_samples_and_rescales_survivors() -> None:
    torch.manual_seed(0)
    p, n = 0.3, 20_000
    x = torch.rand(n, 2, 3, 3) + 0.5
    out = drop_path(x, p)
    dropped = (out == 0).flatten(1).all(1)
    assert abs(dropped.float().mean().item() - p) < 0.02
    assert torch.allclose(out[~dropped], x[~dropped] / (1 - p))


def test_drop_path_in_a_cell_skips_identity_and_hits_every_other_op() -> None:
    cell_geno = Genotype(
        normal=[[("sep_conv_3x3", 0)], [("max_pool_3x3", 1)], [("skip_connect", 2)], [("dil_conv_3x3", 1)]],
        reduce=[[("max_pool_3x3", 0)]],
    ).cell("normal")
    torch.manual_seed(0)
    c, n, p = 4, 4000, 0.25
    cell = EvalCell(cell_geno, CellPlan.standalone(c, c, c)).train()
    s0, s1 = torch.randn(n, c, 4, 4), torch.randn(n, c, 4, 4)
    with torch.no_grad():
        reference = cell(s0, s1, 0.0).split(c, dim=1)
        torch.manual_seed(1)
        nodes = cell(s0, s1, p).split(c, dim=1)
    for k in (0, 1, 3):  # sep conv, max pool, dil conv: each dropped per sample with probability p
        dropped = (nodes[k] == 0).flatten(1).all(1)
        assert abs(dropped.float().mean().item() - p) < 0.035, k
        assert torch.allclose(nodes[k][~dropped], reference[k][~dropped] / (1 - p), atol=1e-5)
    # the identity skip of node 2 is not dropped again: node 4 equals node 2 exactly
    assert torch.equal(nodes[2], nodes[0])
    # independent masks per op
    assert not torch.equal((nodes[0] == 0).flatten(1).all(1), (nodes[1] == 0).flatten(1).all(1))


def test_drop_path_hits_the_stride_2_skip_connect_but_not_the_identity() -> None:
    """REFERENCE.md section 3: drop path on every op that is not an identity. In a reduction cell a
    ``skip_connect`` reading a cell input has stride 2 (FactorizedReduce, with weights): it is dropped per
    sample; in a normal cell the same op is the identity and is never dropped."""
    genotype = Genotype(
        normal=[[("skip_connect", 0)], [("skip_connect", 1)]],
        normal_concat=[2, 3],
        reduce=[[("skip_connect", 0)], [("skip_connect", 1)]],
        reduce_concat=[2, 3],
    )
    c, n, p = 4, 2000, 0.3
    torch.manual_seed(0)
    s0, s1 = torch.randn(n, c, 4, 4), torch.randn(n, c, 4, 4)
    reduce_cell = EvalCell(genotype.cell("reduce"), CellPlan.standalone(c, c, c, reduction=True)).train()
    assert all(isinstance(op, FactorizedReduce) for op in reduce_cell.ops)
    with torch.no_grad():
        reference = reduce_cell(s0, s1, 0.0).split(c, dim=1)
        torch.manual_seed(1)
        nodes = reduce_cell(s0, s1, p).split(c, dim=1)
    assert reference[0].shape == (n, c, 2, 2)
    assert not (reference[0] == 0).flatten(1).all(1).any()  # no sample is zero without drop path
    for k in (0, 1):
        dropped = (nodes[k] == 0).flatten(1).all(1)
        assert abs(dropped.float().mean().item() - p) < 0.05, k
        assert torch.allclose(nodes[k][~dropped], reference[k][~dropped] / (1 - p), atol=1e-5)
    normal_cell = EvalCell(genotype.cell("normal"), CellPlan.standalone(c, c, c)).train()
    assert not any(isinstance(op, FactorizedReduce) for op in normal_cell.ops)
    with torch.no_grad():
        reference = normal_cell(s0, s1, 0.0)
        torch.manual_seed(1)
        assert torch.equal(normal_cell(s0, s1, p), reference)  # identities are never dropped


# ----------------------------------------------------------------------------------- flexible topology


def test_flexible_topology_with_three_normal_cell_types_builds_and_backpropagates() -> None:
    torch.manual_seed(0)
    model = NetworkCIFAR(8, 10, 6, True, FLEX).train()
    model.drop_path_prob = 0.1
    # stage s uses normal-cell type s: ops per cell 7, (reduce 6), 3, (reduce 6), 3
    op_counts = [len(cell.ops) for cell in model.cells]
    assert op_counts == [7, 7, 6, 3, 6, 3]
    assert [cell.multiplier for cell in model.cells] == [3, 3, 3, 2, 3, 1]
    logits, aux = model(torch.randn(3, 3, 32, 32))
    loss = training_loss(logits, aux, torch.tensor([1, 2, 3]), 0.4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    imagenet = NetworkImageNet(8, 5, 6, False, FLEX)
    assert imagenet(torch.randn(1, 3, 96, 96))[0].shape == (1, 5)


def test_bad_genotypes_are_clear_errors() -> None:
    with pytest.raises(GenotypeError, match="no genotype named"):
        NetworkCIFAR(8, 10, 5, False, "NO_SUCH_GENOTYPE")
    bad_reduce = Genotype(
        normal=[[("sep_conv_3x3", 0)]], reduce=[[("max_pool_3x3", 0)]], reduce_concat=[1, 2]
    )
    with pytest.raises(ValueError, match="reduction cell concat"):
        NetworkCIFAR(8, 10, 5, False, bad_reduce)
    with pytest.raises(ValueError, match="even C"):
        NetworkImageNet(7, 10, 5, False, "DARTS_V2")


# ---------------------------------------------------------------------------------------- fastnas info


def _hand_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-adds of every conv and linear layer, counted with forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * out.numel() * k

    def linear_hook(m: nn.Linear, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    model.eval()
    with torch.no_grad():
        model(x)
    return total


def test_info_genotype_json_reports_published_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--genotype", "DARTS_V2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 3_349_342 and info["parameters_with_aux"] == 3_825_768
    assert (info["C"], info["layers"], info["image_size"], info["num_classes"]) == (36, 20, 32, 10)
    assert info["flops_per_image"] == _hand_flops(
        NetworkCIFAR(36, 10, 20, True, "DARTS_V2"), torch.randn(1, 3, 32, 32)
    )
    assert main(["info", "--genotype", "darts_v1", "--dataset", "imagenet", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 4_510_432 and info["network"] == "imagenet"
    assert (info["C"], info["layers"], info["image_size"], info["num_classes"]) == (48, 14, 224, 1000)
    assert info["flops_per_image"] > 0


def test_info_genotype_text_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--genotype", "PDARTS", "--dataset", "cifar100", "--C", "16", "--layers", "8"]) == 0
    out = capsys.readouterr().out
    expected = count_parameters_without_auxiliary(NetworkCIFAR(16, 100, 8, True, "PDARTS"))
    assert f"{expected:,}" in out and "FLOPs" in out and "auxiliary" in out
    assert main(["info", "--genotype", "nope"]) == 2
    assert "no genotype named" in capsys.readouterr().err


def test_info_list_genotypes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--list-genotypes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(ZOO_NAMES)
    by_name = {r["name"]: r for r in rows}
    assert (
        by_name["DARTS_V2"]["cifar10_parameters"] == 3_349_342 and "DARTS" in by_name["DARTS_V2"]["aliases"]
    )
    assert main(["info", "--list-genotypes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ZOO_NAMES)


def test_plain_info_still_describes_the_supernet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--layers", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "supernet" and info["weight_parameters"] == 1_275_834
