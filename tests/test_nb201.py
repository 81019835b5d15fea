"""Tests for the NAS-Bench-201 space, arch strings, results table and networks (REFERENCE.md section 10)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import require_shared
from torch import nn

import fastnas.ops.nb201_ops  # noqa: F401  (registers nor_conv_1x1 / nor_conv_3x3)
from fastnas.algorithms import derive_nb201
from fastnas.errors import FastnasError, NonFiniteError
from fastnas.nb201 import NB201_OPS, NB201Arch, NB201ArchError, NB201LookupError, NB201Result, NB201Table
from fastnas.nn import SupernetShape, build_space_supernet
from fastnas.nn.nb201 import NB201MixedEdge, NB201Network, NB201Supernet
from fastnas.ops import build_op, get_op_spec
from fastnas.spaces.nb201 import NB201Space

TABLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nb201.csv"

# Hand-written from ../shared/data/README.md and the NAS-Bench-201 definitions, not from the code.
RESNET_LIKE = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
MIXED = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def table() -> NB201Table:
    require_shared(TABLE)
    return NB201Table.from_csv(TABLE)


# ------------------------------------------------------------------------------------- arch strings


def test_parse_fields_and_edge_order():
    arch = NB201Arch.parse(MIXED)
    assert arch.ops == (
        "nor_conv_3x3",
        "nor_conv_1x1",
        "avg_pool_3x3",
        "skip_connect",
        "none",
        "nor_conv_3x3",
    )
    assert [(e.source, e.target) for e in arch.edges] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert arch.edges[2].op == "avg_pool_3x3"
    assert arch.count_op("nor_conv_3x3") == 2 and arch.count_op("none") == 1
    assert NB201Arch.parse(ALL_SKIP).count_op("skip_connect") == 6
    assert str(arch) == arch.to_literal() == MIXED
    assert NB201Arch.parse(f"  {MIXED}\n") == arch
    assert NB201_OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    with pytest.raises(ValueError, match="unknown op 'conv'"):
        arch.count_op("conv")


def test_round_trip_all_table_strings():
    require_shared(TABLE)
    with TABLE.open(newline="") as handle:
        strings = [row["arch_str"] for row in csv.DictReader(handle)]
    assert len(strings) == 15625 == len(set(strings))
    for text in strings:
        assert NB201Arch.parse(text).to_literal() == text
    # 5 ops on 6 edges: the table holds every cell exactly once
    assert len({NB201Arch.parse(t).ops for t in strings}) == 5**6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("|none~0|+|none~0|none~1|", "expected 3 node groups"),
        (ALL_NONE + "+|none~0|", "expected 3 node groups"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "input index '1', expected 0"),
        ("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|", "input index '2', expected 1"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~x|", "input index 'x', expected 2"),
        ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "must start and end with '|'"),
        ("|none~0+|none~0|none~1|+|none~0|none~1|none~2|", "must start and end with '|'"),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "expected 1 input"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "expected 2 input"),
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "form 'op~input'"),
        ("|none~0~0|+|none~0|none~1|+|none~0|none~1|none~2|", "form 'op~input'"),
        ("|none~0|+|none~0||+|none~0|none~1|none~2|", "entry '' must have the form"),
    ],
)
def test_malformed_strings(text, message):
    with pytest.raises(NB201ArchError, match=message):
        NB201Arch.parse(text)


def test_arch_error_class():
    assert issubclass(NB201ArchError, FastnasError) and issubclass(NB201ArchError, ValueError)
    with pytest.raises(FastnasError, match="expected 3 node groups"):
        NB201Arch.parse("|none~0|")
    with pytest.raises(NB201ArchError, match=r"arch string of 2,000 characters; an arch string has at most"):
        NB201Arch.parse("|" * 2000)


def test_unknown_op_error_lists_the_five_ops():
    with pytest.raises(NB201ArchError) as info:
        NB201Arch.parse("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert "node 1" in str(info.value)
    for op in NB201_OPS:
        assert op in str(info.value)


def test_arch_constructor_validation():
    with pytest.raises(NB201ArchError, match="6 edges"):
        NB201Arch(("none",) * 5)
    with pytest.raises(NB201ArchError, match="edge 3<-2: unknown op"):
        NB201Arch(("none",) * 5 + ("max_pool_3x3",))
    with pytest.raises(TypeError, match="parse"):
        NB201Arch(ALL_NONE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NB201Arch.parse(42)  # type: ignore[arg-type]


def test_json_round_trip_and_atomic_save(tmp_path):
    arch = NB201Arch.parse(MIXED)
    data = arch.to_json()
    assert data["arch_str"] == MIXED and data["ops"] == list(arch.ops)
    assert NB201Arch.from_json(data) == arch
    assert NB201Arch.from_json(json.dumps(data)) == arch
    assert NB201Arch.from_json({"ops": list(arch.ops)}) == arch
    with pytest.raises(NB201ArchError, match="disagree"):
        NB201Arch.from_json({"arch_str": MIXED, "ops": ["none"] * 6})
    with pytest.raises(NB201ArchError, match="not valid JSON"):
        NB201Arch.from_json("{")
    path = tmp_path / "sub" / "arch.json"
    arch.save_json(path)
    assert os.listdir(path.parent) == ["arch.json"]  # no temporary file left behind
    assert json.loads(path.read_text())["arch_str"] == MIXED
    assert NB201Arch.load_json(path) == arch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"arch_str": "%s", "comment": 1}', r"unknown key 'comment'"),
        ('{"Ops": ["none", "none", "none", "none", "none", "none"], "arch_str": "%s"}', r"unknown key 'Ops'"),
        ('{"arch_str": "%s", "arch_str": "%s"}', r"the key 'arch_str' twice in one object"),
    ],
    ids=["unknown", "misspelt", "duplicate"],
)
def test_arch_json_with_keys_that_would_be_ignored_is_refused(text: str, message: str) -> None:
    with pytest.raises(NB201ArchError, match=message):
        NB201Arch.from_json(text.replace("%s", MIXED))


def test_json_file_layout_keeps_insertion_order(tmp_path):
    path = tmp_path / "arch.json"
    NB201Arch.parse(MIXED).save_json(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "format": "fastnas.nb201_arch/1",\n  "arch_str": "|nor_conv_3x3~0|+')
    assert text.endswith("\n  ]\n}\n")
    assert list(json.loads(text)) == ["format", "arch_str", "ops"]  # not sorted


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"ops": None},
            r"'ops' must be a list of 6 op names \(one per edge, in arch-string order\), got NoneType",
        ),
        ({"ops": "abc"}, r"'ops' must be a list of 6 op names .*got str 'abc'"),
        ({"ops": 7}, r"'ops' must be a list of 6 op names .*got int 7"),
        ({"ops": ["none"] * 5}, r"'ops' must list 6 op names \(one per edge\), got 5"),
        ({"ops": ["none"] * 7}, r"'ops' must list 6 op names \(one per edge\), got 7"),
        ({"ops": ["none"] * 5 + [3]}, r"'ops', edge 3<-2: unknown op 3"),
        ({"ops": ["none"] * 5 + [["none"]]}, r"'ops', edge 3<-2: unknown op \['none'\]"),
        ({"arch_str": 5}, r"'arch_str' must be a string such as '\|nor_conv_3x3~0\|.*got int 5"),
        ({"arch_str": None}, r"'arch_str' must be a string .*got NoneType"),
        ({"arch_str": ["|none~0|"]}, r"'arch_str' must be a string .*got list"),
        ({"arch_str": ALL_NONE, "ops": None}, r"'ops' must be a list of 6 op names"),
        ({"arch_str": "|none~0|"}, "expected 3 node groups"),
        (
            {"format": "fastnas.nb201_arch/2", "arch_str": ALL_NONE},
            r"format 'fastnas.nb201_arch/2'; expected",
        ),
        ({}, r"needs an 'arch_str' \(or 'ops'\) entry"),
        ([ALL_NONE], r"must be an object such as .*got list \['\|none~0\|"),
        ('"abc"', r"must be an object such as .*got str 'abc'"),  # JSON text of a string
        (5, "must be an object"),
    ],
)
def test_malformed_arch_json(data, message):
    if not isinstance(data, str):  # also through the JSON text
        with pytest.raises(NB201ArchError, match=message):
            NB201Arch.from_json(json.dumps(data))
    with pytest.raises(NB201ArchError, match=message):
        NB201Arch.from_json(data)


def test_malformed_arch_json_text_and_files(tmp_path):
    with pytest.raises(NB201ArchError, match="nested too deeply"):
        NB201Arch.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NB201ArchError, match="cannot be read"):
        NB201Arch.from_json('{"arch_str": ' + "1" * 5000 + "}")
    bad = tmp_path / "bad.json"
    bad.write_text('{"ops": null}', encoding="utf-8")
    with pytest.raises(NB201ArchError, match=r"bad\.json: NB201 arch JSON: 'ops' must be a list"):
        NB201Arch.load_json(bad)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(NB201ArchError, match=r"binary\.json: not UTF-8 text"):
        NB201Arch.load_json(binary)


def test_utf8_bom_is_accepted(tmp_path):
    arch = NB201Arch.parse(MIXED)
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"arch_str": MIXED}).encode("utf-8"))
    assert NB201Arch.load_json(path) == arch
    assert NB201Arch.from_json("\ufeff" + json.dumps({"ops": list(arch.ops)})) == arch
    assert NB201Arch.parse("\ufeff" + MIXED) == arch


# ------------------------------------------------------------------------------------------ table


def test_known_values(table):
    assert len(table) == 15625
    best = table.best("c10_test")
    assert best.index == 6111
    assert best.c10_test == pytest.approx(94.3733, abs=1e-3)
    assert table.lookup(RESNET_LIKE).c10_test == pytest.approx(93.91, abs=5e-3)
    assert table.lookup(ALL_SKIP).c10_test == pytest.approx(54.30, abs=5e-3)
    assert table.lookup(ALL_NONE).c10_test == pytest.approx(10.00, abs=5e-3)
    assert table.best("c100_test").index == 9930
    assert table.best("c100_test").c100_test == pytest.approx(73.5133, abs=1e-3)
    assert table.best("in16_test_nats").index == 857  # the CSV column name works too
    assert table.best("in16_test").in16_test == pytest.approx(47.3111, abs=1e-3)


def test_lookup_by_index_string_and_arch_agree(table):
    for index in (0, 1, 6111, 15624):
        by_index = table.lookup(index)
        assert by_index.index == index
        assert table.lookup(by_index.arch_str) == by_index
        assert table.lookup(NB201Arch.parse(by_index.arch_str)) == by_index
        assert isinstance(by_index, NB201Result) and by_index.arch == NB201Arch.parse(by_index.arch_str)
        for value in (by_index.c10_valid, by_index.c10_test, by_index.c100_test, by_index.in16_test):
            assert value is not None and 0.0 < value < 100.0
    # the first data row of the CSV, hand-copied
    first = table.lookup(0)
    assert first.arch_str == (
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
    )
    assert first.c10_valid == pytest.approx(81.982667) and first.params_M == pytest.approx(0.129306)
    assert ALL_NONE in table and 15625 not in table and "garbage" not in table


def test_table_errors(table):
    with pytest.raises(KeyError, match="index 15625 is not in the NAS-Bench-201 table"):
        table.lookup(15625)
    with pytest.raises(ValueError, match="unknown op"):
        table.lookup("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(TypeError):
        table.lookup(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown NB201 metric 'accuracy'"):
        table.best("accuracy")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_small_table_unknown_arch_and_missing_columns(tmp_path):
    path = _write_csv(
        tmp_path / "small.csv",
        ["index", "arch_str", "c10_test_nats", "params_M"],
        [["3", ALL_SKIP, "54.3", "0.07"], ["7", RESNET_LIKE, "", "0.56"]],
    )
    small = NB201Table.load(path)
    assert len(small) == 2
    skip = small.lookup(3)
    assert skip.c10_test == pytest.approx(54.3) and skip.c10_valid is None and skip.in16_test is None
    assert small.lookup(RESNET_LIKE).c10_test is None  # empty cell
    assert small.best("c10_test").index == 3  # entries without the metric are skipped
    with pytest.raises(ValueError, match="no values for 'c100_test'"):
        small.best("c100_test")
    with pytest.raises(NB201LookupError) as info:
        small.lookup(ALL_NONE)
    assert isinstance(info.value, KeyError)
    assert str(info.value) == f"architecture {ALL_NONE} is not in the NAS-Bench-201 table {path} (2 entries)"
    with pytest.raises(KeyError, match="index 0 is not in"):
        small.lookup(0)


def test_bad_csv_files(tmp_path):
    no_arch = _write_csv(tmp_path / "a.csv", ["index", "c10_test_nats"], [["0", "1.0"]])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['arch_str'\]"):
        NB201Table.from_csv(no_arch)
    bad_row = _write_csv(tmp_path / "b.csv", ["index", "arch_str"], [["0", ALL_NONE], ["1", "|x~0|"]])
    with pytest.raises(ValueError, match=r"b.csv: entry with index 1: arch string '\|x~0\|'"):
        NB201Table.from_csv(bad_row)
    dup = _write_csv(tmp_path / "c.csv", ["index", "arch_str"], [["0", ALL_NONE], ["1", ALL_NONE]])
    with pytest.raises(ValueError, match="appears twice"):
        NB201Table.from_csv(dup)


def test_missing_file_and_suffixes(tmp_path):
    missing = tmp_path / "nope" / "nb201.csv"
    for loader in (NB201Table.load, NB201Table.from_csv):
        with pytest.raises(FileNotFoundError) as info:
            loader(missing)
        assert str(missing) in str(info.value) and "NAS-Bench-201-v1_1-096897.pth" in str(info.value)
    other = tmp_path / "table.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unknown suffix '.txt'"):
        NB201Table.load(other)


def test_official_file_needs_nas_201_api(tmp_path):
    try:
        import nas_201_api  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("nas_201_api is installed; the missing-package message cannot be checked")
    fake = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    fake.write_bytes(b"")
    with pytest.raises(ImportError, match="pip install nas-bench-201"):
        NB201Table.load(fake)


# ------------------------------------------------------------------------------------ space & ops


def test_space_layout():
    space = NB201Space()
    assert space.name == "nb201" and space.ops == NB201_OPS
    assert (space.num_nodes, space.num_edges, space.num_ops) == (4, 6, 5)
    assert space.cell_types == ("cell",)
    assert [(e.index, e.source, e.node) for e in space.edges] == [
        (0, 0, 1),
        (1, 0, 2),
        (2, 1, 2),
        (3, 0, 3),
        (4, 1, 3),
        (5, 2, 3),
    ]
    assert space.op_index("nor_conv_3x3") == 3 and space.op_index("none") == 0
    with pytest.raises(ValueError, match="not in this space"):
        space.op_index("sep_conv_3x3")
    with pytest.raises(ValueError, match="not a NAS-Bench-201 op"):
        NB201Space(ops=("none", "sep_conv_3x3"))
    with pytest.raises(ValueError, match="other than 'none'"):
        NB201Space(ops=("none",))
    with pytest.raises(ValueError, match="fixed topology of 4 nodes"):
        NB201Space(num_nodes=5)
    assert NB201Space(num_nodes=4) == space
    supernet = build_space_supernet(space, SupernetShape(C=4, layers=1, num_classes=3, in_channels=1))
    assert isinstance(supernet, NB201Supernet) and supernet.space is space and len(supernet.cells) == 3
    assert supernet(torch.randn(2, 1, 8, 8), {"cell": torch.full((6, 5), 0.2)}).shape == (2, 3)


def test_nor_conv_ops():
    for name, kernel, padding in (("nor_conv_1x1", 1, 0), ("nor_conv_3x3", 3, 1)):
        assert get_op_spec(name).kind == "conv"
        op = build_op(name, 8, 1, affine=False)
        relu, conv, bn = op
        assert isinstance(relu, nn.ReLU) and isinstance(bn, nn.BatchNorm2d) and not bn.affine
        assert (
            conv.kernel_size == (kernel, kernel) and conv.padding == (padding, padding) and conv.bias is None
        )
        assert build_op(name, 8, 2, affine=True)(torch.randn(2, 8, 8, 8)).shape == (2, 8, 4, 4)
    assert get_op_spec("avg_pool_3x3").kind == "pool" and get_op_spec("none").kind == "zero"


def test_derive_argmax_with_none_and_ties():
    space = NB201Space()
    w = torch.zeros(6, 5)
    expected = ["nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "none"]
    for e, op in enumerate(expected):
        w[e, NB201_OPS.index(op)] = 1.0
    w[1, 0] = 5.0  # none is the largest on edge 2<-0
    w[5] = torch.tensor([0.3, 0.3, 0.1, 0.3, 0.0])  # tie between none, skip, 3x3: the lower index wins
    assert derive_nb201({"cell": w}, space).to_literal() == (
        "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    )
    assert derive_nb201({"cell": torch.softmax(w, -1)}, space) == derive_nb201({"cell": w}, space)
    w[5, 1] = 0.31
    assert derive_nb201({"cell": w}, space).ops[5] == "skip_connect"
    with pytest.raises(ValueError, match=r"shape \(6, 5\)"):
        derive_nb201({"cell": torch.zeros(14, 8)}, space)
    w[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="not finite"):
        derive_nb201({"cell": w}, space)


# ------------------------------------------------------------------------------------------ networks


def test_mixed_edge_has_no_bn_after_pooling():
    edge = NB201MixedEdge(4, NB201_OPS)
    assert isinstance(edge.ops[NB201_OPS.index("avg_pool_3x3")], nn.AvgPool2d)
    bns = [m for m in edge.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and not any(bn.affine for bn in bns)  # only inside the two convolutions
    x = torch.randn(2, 4, 6, 6)
    w = torch.zeros(5)
    w[NB201_OPS.index("avg_pool_3x3")] = 1.0
    expected = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(edge(x, w), expected)


def test_supernet_forward_backward():
    torch.manual_seed(0)
    space = NB201Space()
    net = NB201Supernet(space, C=4, N=2, num_classes=7)
    assert net.cell_types == ["cell"] * 6 and net.executor_name == "reference"
    assert net.space is space and (net.C, net.num_classes) == (4, 7)
    net.set_executor("reference")
    with pytest.raises(ValueError, match="reference"):
        net.set_executor("fused")
    cell_bns = [m for c in net.cells for m in c.modules() if isinstance(m, nn.BatchNorm2d)]
    assert cell_bns and not any(bn.affine for bn in cell_bns)
    alpha = (1e-3 * torch.randn(6, 5)).requires_grad_()
    weights = torch.softmax(alpha, dim=-1)
    weights.retain_grad()
    logits = net(torch.randn(4, 3, 8, 8), {"cell": weights})
    assert logits.shape == (4, 7)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert torch.all(weights.grad[:, 0] == 0)  # none adds nothing
    assert torch.all(weights.grad[:, 1:].abs() > 0)
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match=r"shape \(6, 5\)"):
        net(torch.randn(1, 3, 8, 8), {"cell": torch.zeros(14, 8)})
    with pytest.raises(KeyError, match="'cell'"):
        net(torch.randn(1, 3, 8, 8), {"normal": weights})


def test_one_hot_supernet_equals_network():
    """With one-hot weights and the same parameters, the supernet computes the arch's network."""
    torch.manual_seed(1)
    arch = NB201Arch.parse(MIXED)
    space = NB201Space()
    supernet = NB201Supernet(space, C=4, N=1)
    network = NB201Network(arch, C=4, N=1)
    super_state = supernet.state_dict()
    copied = {}
    for key in network.state_dict():
        parts = key.split(".")
        if parts[0] == "cells":  # cells.i.edges.e.<op> <-> cells.i.edges.e.ops.k.<op>
            k = space.op_index(arch.ops[int(parts[3])])
            source = ".".join([*parts[:4], "ops", str(k), *parts[4:]])
        else:
            source = key
        if source in super_state:
            copied[key] = super_state[source]
        else:
            assert key.endswith(("bn.weight", "bn.bias", ".2.weight", ".2.bias")), key  # affine BN only
    missing = network.load_state_dict(copied, strict=False).missing_keys
    assert all(key.startswith("cells.") for key in missing)
    one_hot = torch.zeros(6, 5)
    for e, op in enumerate(arch.ops):
        one_hot[e, space.op_index(op)] = 1.0
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(supernet(x, {"cell": one_hot}), network(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", [RESNET_LIKE, ALL_SKIP, MIXED])
def test_network_forward(arch):
    net = NB201Network(arch, C=4, N=1, num_classes=5)
    assert net.arch == NB201Arch.parse(arch)
    logits = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_all_none_network_gives_constant_logits():
    net = NB201Network(NB201Arch.parse(ALL_NONE), C=4, N=1, num_classes=3)
    with torch.no_grad():
        a = net(torch.randn(2, 3, 8, 8))
        b = net(torch.randn(2, 3, 8, 8))
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, net.classifier.bias.expand(2, 3))  # zero features reach the classifier


def test_network_parameter_count_matches_table(table):
    """The table's ``params_M`` (10 classes, C=16, N=5) pins the macro skeleton down exactly."""
    for arch in (RESNET_LIKE, ALL_NONE, ALL_SKIP, table.lookup(6111).arch_str, table.lookup(0).arch_str):
        expected = table.lookup(arch).params_M
        count = sum(p.numel() for p in NB201Network(arch).parameters())
        assert abs(count / 1e6 - expected) < 1e-6, (arch, count, expected)  # the table rounds to 1e-6 M
    # hand-checked figure for the ResNet-like cell from the CSV
    assert table.lookup(RESNET_LIKE).params_M == pytest.approx(0.559386)
