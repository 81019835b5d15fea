"""Tests for fastnas.genotype and the published-genotype zoo (REFERENCE.md sections 1, 3, 6, 9)."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import stat
import sys
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import require_shared

import fastnas.genotype
import fastnas.genotype_zoo
from fastnas.errors import FastnasError, MissingPathError
from fastnas.genotype import (
    GENOTYPE_JSON_FORMAT,
    MAX_GENOTYPE_FILE_BYTES,
    MAX_INPUTS_PER_NODE,
    MAX_LITERAL_CHARS,
    MAX_LITERAL_DEPTH,
    MAX_NODES_PER_CELL,
    CellGenotype,
    Genotype,
    GenotypeError,
    get_zoo_genotype,
    load_genotype,
)
from fastnas.genotype_zoo import ZOO_LITERALS, ZOO_NAMES, resolve_zoo_name
from fastnas.ops import UnknownOpError, get_op_spec

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "REFERENCE.md"
PUBLISHED = (
    "DARTS_V1",
    "DARTS_V2",
    "PDARTS",
    "PC_DARTS_cifar",
    "PC_DARTS_image",
    "DDSAS_cifar10",
    "DDSAS_cifar100",
    "DDSAS_imagenet",
)


def reference_literals() -> dict[str, str]:
    """``NAME -> 'NAME = Genotype(...)'`` from the literal block of REFERENCE.md section 3."""
    require_shared(REFERENCE)
    text = REFERENCE.read_text(encoding="utf-8")
    match = re.search(r"Published genotypes \(facts, as literals\):\s*```\n(.*?)```", text, re.S)
    assert match, "the literal block of REFERENCE.md section 3 was not found"
    lines = [line.strip() for line in match.group(1).splitlines() if line.strip()]
    return {line.split("=", 1)[0].strip(): line for line in lines}


def flat(ops_inputs: str) -> list[tuple[str, int]]:
    """Hand-written pair list: 'sep_conv_3x3 0, skip_connect 1' -> [('sep_conv_3x3', 0), ...]."""
    out = []
    for item in ops_inputs.split(","):
        op, idx = item.split()
        out.append((op, int(idx)))
    return out


# ------------------------------------------------------------------------------ published literals


def test_reference_block_has_every_published_genotype() -> None:
    assert sorted(reference_literals()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_reference_literal_round_trip(name: str) -> None:
    line = reference_literals()[name]
    g = Genotype.parse(line)
    printed = g.to_literal()
    # str() is the DARTS literal; range(2, 6) prints as the equal list.
    assert printed == line.split("=", 1)[1].strip().replace("range(2, 6)", "[2, 3, 4, 5]")
    assert str(g) == printed
    assert Genotype.parse(printed) == g
    assert hash(Genotype.parse(printed)) == hash(g)
    assert g == get_zoo_genotype(name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_round_trip(name: str) -> None:
    g = get_zoo_genotype(name)
    assert Genotype.parse(g.to_literal()) == g
    assert Genotype.from_json(json.loads(json.dumps(g.to_json()))) == g
    assert len(g.normal) == 8 and len(g.reduce) == 8
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]


def test_zoo_literals_are_copied_verbatim() -> None:
    assert set(ZOO_NAMES) == set(PUBLISHED)
    for name, line in reference_literals().items():
        assert ZOO_LITERALS[name] == line


def test_darts_v2_fields_match_hand_written_expectation() -> None:
    g = Genotype.parse(reference_literals()["DARTS_V2"])
    assert g.normal == flat(
        "sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 0, sep_conv_3x3 1, "
        "sep_conv_3x3 1, skip_connect 0, skip_connect 0, dil_conv_3x3 2"
    )
    assert g.normal[7] == ("dil_conv_3x3", 2)
    assert g.reduce[0] == ("max_pool_3x3", 0)
    assert g.reduce_concat == [2, 3, 4, 5]
    assert g.normal_concat == [2, 3, 4, 5]
    assert g.num_normal_types == 1
    assert g.normal_cells[0].num_nodes == 4 and g.reduce_cell.num_nodes == 4
    assert g.normal_cells[0].nodes[3] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert g.count_op("skip_connect") == 2
    assert g.count_op("max_pool_3x3", cell="reduce") == 5
    assert g.count_op("skip_connect", cell="all") == 5
    assert g.ops_used() == ["dil_conv_3x3", "max_pool_3x3", "sep_conv_3x3", "skip_connect"]
    assert g.ops_used("reduce") == ["max_pool_3x3", "skip_connect"]
    # DARTS user code: op_names, indices = zip(*genotype.normal)
    op_names, indices = zip(*g.normal, strict=True)
    assert indices == (0, 1, 0, 1, 1, 0, 0, 2) and op_names[5] == "skip_connect"


def test_zoo_aliases_and_case() -> None:
    assert get_zoo_genotype("darts") == get_zoo_genotype("DARTS_V2")
    assert get_zoo_genotype("PC_DARTS") == get_zoo_genotype("PC_DARTS_cifar")
    assert get_zoo_genotype("ddsas") == get_zoo_genotype("DDSAS_cifar10")
    assert get_zoo_genotype("P_DARTS") is get_zoo_genotype("pdarts")
    assert resolve_zoo_name("pc_darts_IMAGE") == "PC_DARTS_image"
    assert resolve_zoo_name("nope") is None
    with pytest.raises(GenotypeError, match=r"unknown zoo genotype 'nope'.*DARTS_V2"):
        get_zoo_genotype("nope")


# ------------------------------------------------------------------------------------ construction


def test_range_concat_equals_list() -> None:
    pairs = get_zoo_genotype("DARTS_V1").normal
    a = Genotype(normal=pairs, normal_concat=range(2, 6), reduce=pairs, reduce_concat=range(2, 6))
    b = Genotype(normal=pairs, normal_concat=[2, 3, 4, 5], reduce=pairs, reduce_concat=[2, 3, 4, 5])
    assert a == b and hash(a) == hash(b)
    assert a.normal_concat == [2, 3, 4, 5]
    text = f"Genotype(normal={pairs!r}, normal_concat=range(2, 6), reduce={pairs!r}, "
    text += "reduce_concat=[2, 3, 4, 5])"
    assert Genotype.parse(text) == b


def test_darts_namedtuple_style_positional_and_views() -> None:
    pairs = flat("sep_conv_3x3 0, sep_conv_3x3 1, skip_connect 0, dil_conv_5x5 2")
    g = Genotype(pairs, [2, 3], pairs, [2, 3])
    assert g.normal == pairs and g.reduce == pairs and g.reduce_concat == [2, 3]
    assert g.normal_cells[0].num_nodes == 2
    # The views are fresh lists: mutating one does not change the frozen genotype.
    g.normal.append(("none", 0))
    assert len(g.normal) == 4
    # Missing concat defaults to every intermediate node.
    assert Genotype(normal=pairs, reduce=pairs).normal_concat == [2, 3]


def test_cell_accessors_and_from_cells() -> None:
    g = get_zoo_genotype("PDARTS")
    assert g.cell("reduce") is g.reduce_cell
    assert g.cell("normal") == g.cell("normal", stage=2) == g.normal_cells[0]
    rebuilt = Genotype.from_cells(g.normal_cells[0], g.reduce_cell)
    assert rebuilt == g
    with pytest.raises(GenotypeError, match="'normal' or 'reduce'"):
        g.cell("reduction")  # type: ignore[arg-type]


def test_genotype_is_frozen_and_hashable() -> None:
    g = get_zoo_genotype("DARTS_V2")
    with pytest.raises(AttributeError):
        g.reduce_cell = g.normal_cells[0]  # type: ignore[misc]
    assert len({g, Genotype.parse(str(g)), get_zoo_genotype("DARTS_V1")}) == 2


# --------------------------------------------------------------------------- variable inputs, stages

VARIABLE = Genotype(
    normal=[[("sep_conv_3x3", 1)], [("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_5x5", 2)]],
    normal_concat=[2, 3],
    reduce=[[("max_pool_3x3", 0), ("max_pool_3x3", 1)], [("skip_connect", 2)], [("avg_pool_3x3", 3)]],
    reduce_concat=[3, 4],
)


def test_variable_inputs_structure() -> None:
    assert VARIABLE.normal_cells[0].inputs_per_node == (1, 3)
    assert VARIABLE.reduce_cell.inputs_per_node == (2, 1, 1)
    assert VARIABLE.normal == flat("sep_conv_3x3 1, skip_connect 0, dil_conv_3x3 1, sep_conv_5x5 2")
    assert VARIABLE.reduce_concat == [3, 4]


def test_variable_inputs_literal_round_trip() -> None:
    text = VARIABLE.to_literal()
    assert text.startswith("Genotype(normal=[[('sep_conv_3x3', 1)], [('skip_connect', 0), ")
    back = Genotype.parse(text)
    assert back == VARIABLE
    assert back.normal_cells[0].nodes[1][2] == ("sep_conv_5x5", 2)


def test_variable_inputs_json_round_trip(tmp_path: Path) -> None:
    data = VARIABLE.to_json()
    assert data["format"] == GENOTYPE_JSON_FORMAT
    assert data["normal_cells"][0]["nodes"][0] == [["sep_conv_3x3", 1]]
    assert len(data["normal_cells"][0]["nodes"][1]) == 3
    assert Genotype.from_json(json.loads(json.dumps(data))) == VARIABLE
    path = VARIABLE.save_json(tmp_path / "sub" / "g.json")
    assert Genotype.load_json(path) == VARIABLE
    assert [p.name for p in path.parent.iterdir()] == ["g.json"]  # no temp file left behind


def test_several_normal_types_round_trip(tmp_path: Path) -> None:
    base = get_zoo_genotype("DARTS_V2")
    second = [[("sep_conv_5x5", 0), ("sep_conv_5x5", 1)], [("skip_connect", 2)], [("dil_conv_3x3", 3)]]
    third = get_zoo_genotype("PDARTS").normal
    g = Genotype(
        normal=base.normal,
        normal_concat=base.normal_concat,
        reduce=base.reduce,
        reduce_concat=base.reduce_concat,
        normal_2=second,
        normal_2_concat=[3, 4],
        normal_3=third,
        normal_3_concat=range(2, 6),
    )
    assert g.num_normal_types == 3
    assert g.normal_2 == [("sep_conv_5x5", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("dil_conv_3x3", 3)]
    assert g.normal_2_concat == [3, 4]
    assert g.normal_3 == third
    assert g.cell("normal", 1).inputs_per_node == (2, 1, 1)
    assert g.cell("normal", 2) == get_zoo_genotype("PDARTS").normal_cells[0]
    with pytest.raises(GenotypeError, match="stage 3 has no normal cell"):
        g.cell("normal", 3)
    assert g.count_op("sep_conv_5x5", cell="normal_2") == 2
    text = g.to_literal()
    assert ", normal_2=[[('sep_conv_5x5', 0), ('sep_conv_5x5', 1)], [('skip_connect', 2)]" in text
    assert text.index("reduce_concat=") < text.index("normal_2=") < text.index("normal_3=")
    assert Genotype.parse(text) == g
    assert Genotype.load_json(g.save_json(tmp_path / "g.json")) == g
    assert Genotype.from_cells(g.normal_cells, g.reduce_cell) == g
    assert g != base


def test_extra_normal_without_gap_rule() -> None:
    pairs = get_zoo_genotype("DARTS_V2").normal
    with pytest.raises(GenotypeError, match="normal_2= is missing"):
        Genotype(normal=pairs, reduce=pairs, normal_3=pairs)
    with pytest.raises(GenotypeError, match="unexpected keyword 'normal_concatt'"):
        Genotype(normal=pairs, reduce=pairs, normal_concatt=[2])


# ------------------------------------------------------------------------------------ JSON format


def test_json_schema_and_exact_round_trip(tmp_path: Path) -> None:
    g = get_zoo_genotype("PC_DARTS_image")
    data = g.to_json()
    assert set(data) == {"format", "normal_cells", "reduce_cell"}
    assert data["reduce_cell"]["nodes"][1] == [["dil_conv_5x5", 2], ["max_pool_3x3", 1]]
    assert data["reduce_cell"]["concat"] == [2, 3, 4, 5]
    path = g.save_json(tmp_path / "genotype.json")
    assert json.loads(path.read_text()) == data
    loaded = Genotype.load_json(path)
    assert loaded == g and loaded.to_json() == data
    with pytest.raises(GenotypeError, match="format"):
        Genotype.from_json({**data, "format": "other/9"})


# ------------------------------------------------------------------------------------ malformed


def darts_v2_with(normal: object) -> str:
    return f"Genotype(normal={normal!r}, reduce=[('skip_connect', 0)], reduce_concat=[2])"


@pytest.mark.parametrize(
    ("normal", "pattern"),
    [
        ([("sep_conv_9x9", 0), ("skip_connect", 1)], r"normal cell, node 0, position 0: unknown op 'sep_"),
        ([("sep_conv_3x3", 0), ("skip_connect", 2)], r"node 0, position 1: input index 2 .*not earlier than"),
        ([("sep_conv_3x3", 0), ("skip_connect", 1), ("skip_connect", 4), ("skip_connect", 0)],
         r"node 1, position 0: input index 4 .*not earlier than its node"),
        ([("sep_conv_3x3", -1), ("skip_connect", 1)], r"node 0, position 0: negative input index -1"),
        ([[("sep_conv_3x3", 0)], []], r"normal cell, node 1: empty node"),
        ([("sep_conv_3x3", 0), ("skip_connect", 1), ("skip_connect", 2)], r"odd number of entries \(3\)"),
        ([("sep_conv_3x3", 0, 1), ("skip_connect", 1)], r"node 0, position 0: expected an \(op_name, input_"),
        ([(0, "sep_conv_3x3"), ("skip_connect", 1)], r"node 0, position 0: op name must be a string"),
        ([("sep_conv_3x3", "0"), ("skip_connect", 1)], r"input index must be an int"),
        ([], r"normal cell: the cell has no nodes"),
    ],
)  # fmt: skip
def test_malformed_cells_raise(normal: object, pattern: str) -> None:
    with pytest.raises(GenotypeError, match=pattern):
        Genotype(normal=normal, reduce=[("skip_connect", 0)])
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.parse(darts_v2_with(normal))


def test_unknown_op_lists_known_ops() -> None:
    with pytest.raises(GenotypeError) as info:
        Genotype(normal=[("conv_9x9", 0), ("skip_connect", 1)], reduce=[("skip_connect", 0), ("none", 1)])
    message = str(info.value)
    assert "known ops are:" in message and "sep_conv_3x3" in message and "dil_conv_5x5" in message
    assert isinstance(info.value, ValueError)


def test_malformed_cell_in_reduce_names_cell() -> None:
    with pytest.raises(GenotypeError, match=r"^reduce cell, node 1, position 0"):
        reduce = [("skip_connect", 0), ("none", 1), ("bad_op", 0), ("none", 1)]
        Genotype(normal=[("skip_connect", 0)] * 2, reduce=reduce)


@pytest.mark.parametrize(
    ("concat", "pattern"),
    [([2, 6], r"normal cell concat, position 1: index 6 out of range"), ([], "empty"), ([2, 2], "twice"),
     ([-1], "out of range")],
)  # fmt: skip
def test_bad_concat(concat: list[int], pattern: str) -> None:
    pairs = get_zoo_genotype("DARTS_V2").normal
    with pytest.raises(GenotypeError, match=pattern):
        Genotype(normal=pairs, normal_concat=concat, reduce=pairs, reduce_concat=[2, 3, 4, 5])


def test_cell_genotype_direct_construction_validates() -> None:
    cell = CellGenotype(nodes=[[("skip_connect", 0)], [("sep_conv_3x3", 2)]], concat=[3])  # type: ignore[arg-type]
    assert cell.nodes == ((("skip_connect", 0),), (("sep_conv_3x3", 2),)) and cell.concat == (3,)
    with pytest.raises(GenotypeError, match="not earlier than its node"):
        CellGenotype(nodes=((("skip_connect", 2),),), concat=(2,))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("this is not a genotype", "not valid Python syntax"),
        ("", "empty"),
        ("Genotype(normal=[('sep_conv_3x3', 0)", "not valid Python syntax"),
        ("Foo(normal=[])", r"must be a Genotype\(...\) call"),
        ("Genotype(normal=x, reduce=[])", "unsupported expression 'x'"),
        ("Genotype(**kw)", r"'\*\*' arguments are not allowed"),
        ("a = 1\nb = 2", "found 2 statements"),
        ("Genotype(normal=[('skip_connect', 0)] * 2, reduce=[])", "unsupported expression"),
    ],
)
def test_garbage_text_raises(text: str, pattern: str) -> None:
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.parse(text)


def test_eval_injection_is_rejected_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    payloads = [
        "__import__('os').system('echo hi')",
        f"__import__('os').system('touch {marker}')",
        f"Genotype(normal=__import__('os').system('touch {marker}'), reduce=[])",
        f"Genotype(normal=[('skip_connect', 0), ('none', 1)], normal_concat=range(__import__('os').system("
        f"'touch {marker}')), reduce=[('skip_connect', 0), ('none', 1)])",
    ]
    for text in payloads:
        with pytest.raises(GenotypeError):
            Genotype.parse(text)
        with pytest.raises(GenotypeError):
            load_genotype(text)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- load_genotype


def test_load_genotype_every_form(tmp_path: Path) -> None:
    expected = Genotype.parse(reference_literals()["DARTS_V2"]) if REFERENCE.is_file() else None
    g = load_genotype("DARTS_V2")
    if expected is not None:
        assert g == expected
    assert load_genotype(g) is g
    assert load_genotype("darts_v2") == g
    assert load_genotype(ZOO_LITERALS["DARTS_V2"]) == g  # "NAME = Genotype(...)"
    assert load_genotype(str(g)) == g
    assert load_genotype(g.to_json()) == g

    json_file = g.save_json(tmp_path / "arch.json")
    assert load_genotype(json_file) == g
    assert load_genotype(str(json_file)) == g

    text_file = tmp_path / "arch.txt"
    text_file.write_text("genotype = " + str(g) + "\n")
    assert load_genotype(text_file) == g

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    g.save_json(run_dir / "genotype.json")
    assert load_genotype(run_dir) == g
    assert load_genotype(str(run_dir)) == g

    legacy = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
    assert load_genotype(legacy(g.normal, range(2, 6), g.reduce, range(2, 6))) == g


def test_load_genotype_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="no such file or directory") as info:
        load_genotype(missing)
    assert "DARTS_V2" in str(info.value) and "run directory" in str(info.value)
    with pytest.raises(GenotypeError, match="no genotype named 'DARTS_V9'"):
        load_genotype("DARTS_V9")
    with pytest.raises(GenotypeError, match="cannot load a genotype from int"):
        load_genotype(42)
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    with pytest.raises(GenotypeError, match=r"has no genotype\.json"):
        load_genotype(empty_run)
    bad = tmp_path / "bad.txt"
    bad.write_text("hello world")
    with pytest.raises(GenotypeError, match=r"bad\.txt"):
        load_genotype(bad)


# ---------------------------------------------------------------------------------- error classes


def test_error_classes_derive_from_fastnas_error() -> None:
    assert issubclass(GenotypeError, FastnasError) and issubclass(GenotypeError, ValueError)
    assert issubclass(UnknownOpError, FastnasError)
    assert issubclass(UnknownOpError, KeyError) and issubclass(UnknownOpError, ValueError)
    with pytest.raises(FastnasError) as info:
        get_op_spec("sep_conv_9x9")
    assert isinstance(info.value, UnknownOpError)
    assert str(info.value).startswith("unknown op 'sep_conv_9x9'")  # not quoted like a KeyError
    with pytest.raises(FastnasError, match="no genotype named 'DARTS_V9'"):
        load_genotype("DARTS_V9")


# ------------------------------------------------------------------------------- module structure


def _fastnas_imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fastnas":
            found.append((node.module or "", node.lineno))
        elif isinstance(node, ast.Import):
            found += [
                (alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "fastnas"
            ]
    return found


def test_zoo_module_is_pure_data_and_there_is_no_import_cycle() -> None:
    zoo_tree = ast.parse(Path(fastnas.genotype_zoo.__file__).read_text(encoding="utf-8"))
    assert _fastnas_imports(zoo_tree) == []
    assert not hasattr(fastnas.genotype_zoo, "get_zoo_genotype")
    genotype_tree = ast.parse(Path(fastnas.genotype.__file__).read_text(encoding="utf-8"))
    top_level = [n for n in genotype_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    nested = [
        (module, line)
        for module, line in _fastnas_imports(genotype_tree)
        if not any(line == n.lineno for n in top_level)
    ]
    assert nested == []  # no function-level import hiding a cycle
    assert ("fastnas.genotype_zoo", 0) in [(m, 0) for m, _ in _fastnas_imports(genotype_tree)]


def test_get_zoo_genotype_guards_assigned_names(monkeypatch: pytest.MonkeyPatch) -> None:
    good = ZOO_LITERALS["DARTS_V1"]
    broken = {**ZOO_LITERALS, "DARTS_V1": "DARTS_V3 = " + good.split("=", 1)[1].strip()}
    monkeypatch.setattr(fastnas.genotype, "ZOO_LITERALS", broken)
    fastnas.genotype._zoo_genotype.cache_clear()
    try:
        with pytest.raises(GenotypeError, match="zoo literal 'DARTS_V1' assigns 'DARTS_V3'"):
            get_zoo_genotype("DARTS_V1")
    finally:
        fastnas.genotype._zoo_genotype.cache_clear()
    with pytest.raises(GenotypeError, match="unknown zoo genotype 42"):
        get_zoo_genotype(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- hardened parsing

P2 = "[('skip_connect', 0), ('none', 1)]"
Q2 = "[('sep_conv_3x3', 0), ('max_pool_3x3', 1)]"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (f"__import__('os').Genotype(normal={P2}, reduce={P2})",
         r"plain name Genotype, got a call of \"__import__\('os'\)\.Genotype\"; write Genotype\("),
        (f"(lambda: 0)().Genotype(normal={P2}, reduce={P2})",
         r"plain name Genotype, got a call of '\(lambda: 0\)\(\)\.Genotype'"),
        (f"genotypes.Genotype(normal={P2}, reduce={P2})", r"got a call of 'genotypes\.Genotype'"),
        (f"Genotype(normal={P2}, reduce={P2})(1)", r"got a call of \"Genotype\(normal="),
        (f"x.y = Genotype(normal={P2}, reduce={P2})", r"assigns to 'x\.y'; expected one plain name"),
        (f"a = b = Genotype(normal={P2}, reduce={P2})", r"assigns to 'a = b'; expected one plain name"),
        (f"g[0] = Genotype(normal={P2}, reduce={P2})", r"assigns to 'g\[0\]'"),
        (f"g: int = Genotype(normal={P2}, reduce={P2})", r"must be 'Genotype\(...\)' or 'NAME = Genotype"),
        (f"[Genotype(normal={P2}, reduce={P2})]", r"must be a Genotype\(...\) call, got \"\[Genotype\("),
    ],
)  # fmt: skip
def test_only_a_plain_genotype_call_is_accepted(text: str, pattern: str) -> None:
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.parse(text)
    with pytest.raises(GenotypeError, match=pattern):
        load_genotype(text)


def test_plain_call_and_named_assignment_are_accepted() -> None:
    expected = Genotype(normal=flat("skip_connect 0, none 1"), reduce=flat("skip_connect 0, none 1"))
    assert Genotype.parse(f"Genotype(normal={P2}, reduce={P2})") == expected
    assert fastnas.genotype._parse_literal(f"MY_NET = Genotype(normal={P2}, reduce={P2})") == (
        "MY_NET",
        expected,
    )


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (f"Genotype({P2}, normal={Q2}, reduce={P2})",
         r"field 'normal' given twice \(as positional argument 1 and as keyword normal=\)"),
        (f"Genotype({P2}, [2, 3], {P2}, normal_concat=[2, 3])",
         r"field 'normal_concat' given twice \(as positional argument 2"),
        (f"Genotype({P2}, [2, 3], {P2}, [2, 3], reduce_concat=[2])",
         r"field 'reduce_concat' given twice \(as positional argument 4"),
        (f"Genotype(normal={P2}, normal={Q2}, reduce={P2})",
         r"field 'normal' given twice \(as keyword normal="),
        (f"Genotype(normal={P2}, reduce={P2}, reduce={Q2})", r"field 'reduce' given twice"),
        (f"Genotype(normal={P2}, reduce={P2}, normal_2={P2}, normal_2={Q2})",
         r"field 'normal_2' given twice"),
        (f"Genotype(normal={P2}, reduce={P2}, normal_2={P2}, normal_02={Q2})",
         r"keyword 'normal_02': write the normal-cell number without leading zeros \('normal_2'\)"),
        (f"Genotype(normal={P2}, reduce={P2}, normal_2={P2}, normal_2_concat=[2], normal_02_concat=[3])",
         r"keyword 'normal_02_concat'.*leading zeros \('normal_2_concat'\)"),
        (f"Genotype({P2}, [2, 3], {P2}, [2, 3], [2])", r"at most 4 positional arguments .*got 5"),
    ],
)  # fmt: skip
def test_repeated_fields_are_rejected(text: str, pattern: str) -> None:
    with pytest.raises(GenotypeError, match=pattern):
        Genotype.parse(text)


def test_repeated_extra_normal_keywords_in_constructor() -> None:
    pairs, other = flat("skip_connect 0, none 1"), flat("sep_conv_3x3 0, max_pool_3x3 1")
    with pytest.raises(GenotypeError, match=r"'normal_02'.*leading zeros"):
        Genotype(normal=pairs, reduce=pairs, normal_2=pairs, normal_02=other)
    with pytest.raises(GenotypeError, match=r"'normal_002_concat'.*leading zeros"):
        Genotype(normal=pairs, reduce=pairs, normal_2=pairs, normal_002_concat=[2])
    g = Genotype(normal=pairs, reduce=pairs, normal_2=other)
    assert g.normal_2 == other
    with pytest.raises(AttributeError):
        _ = g.normal_02


def test_positional_fields_follow_darts_order() -> None:
    a = flat("sep_conv_3x3 0, sep_conv_3x3 1, skip_connect 0, dil_conv_3x3 2, "
             "sep_conv_5x5 1, none 3, avg_pool_3x3 4, skip_connect 2")  # fmt: skip
    b = flat("max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, avg_pool_3x3 0, "
             "dil_conv_5x5 3, skip_connect 1, sep_conv_3x3 4, none 0")  # fmt: skip
    expected = Genotype(normal=a, normal_concat=[2, 3, 4, 5], reduce=b, reduce_concat=[4, 5])
    swapped = Genotype(normal=b, normal_concat=[4, 5], reduce=a, reduce_concat=[2, 3, 4, 5])
    assert expected != swapped
    for g in (
        Genotype.parse(f"Genotype({a!r}, [2, 3, 4, 5], {b!r}, [4, 5])"),
        Genotype(a, [2, 3, 4, 5], b, [4, 5]),
    ):
        assert g == expected and g != swapped
        assert g.normal == a and g.reduce == b
        assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [4, 5]
    mixed = Genotype.parse(f"Genotype({a!r}, reduce_concat=[4, 5], reduce={b!r})")
    assert mixed.normal == a and mixed.reduce == b and mixed.normal_concat == [2, 3, 4, 5]
    assert mixed.reduce_concat == [4, 5]


def test_literal_length_is_bounded() -> None:
    g = get_zoo_genotype("DARTS_V2")
    padded = str(g) + " " * (MAX_LITERAL_CHARS - len(str(g)))
    assert len(padded) == MAX_LITERAL_CHARS and Genotype.parse(padded) == g
    with pytest.raises(GenotypeError, match=rf"{MAX_LITERAL_CHARS + 1:,} characters long; at most"):
        Genotype.parse(padded + " ")
    with pytest.raises(GenotypeError, match="characters long"):
        load_genotype("Genotype(" + "[" * (MAX_LITERAL_CHARS + 1))


def _nested(levels: int) -> str:
    return "[" * levels + "('skip_connect', 0)" + "]" * levels


@pytest.mark.parametrize(
    ("field", "pattern"),
    [
        (_nested(MAX_LITERAL_DEPTH), rf"field 'normal' .*nested more than {MAX_LITERAL_DEPTH} levels"),
        (_nested(150), rf"nested more than {MAX_LITERAL_DEPTH} levels"),
        ("[" * 300 + "]" * 300, "not valid Python syntax"),  # the tokenizer's own limit
        ("-" * 500 + "1", rf"nested more than {MAX_LITERAL_DEPTH} levels"),
        ("-" * 5000 + "1", "nested too deeply to parse"),  # RecursionError inside ast.parse
        ("-" * 90_000 + "1", "nested too deeply to parse"),  # MemoryError inside ast.parse
        (
            "range(100000000000)",
            r"range\(100000000000,\) has 100,000,000,000 entries; a concat lists at most",
        ),
        ("range(2, 6, 0)", "must not be zero"),
        ("1" * 5000, "not valid Python syntax"),  # more digits than int() converts
        ("'\x00'", "cannot be parsed|not valid Python syntax"),
    ],
)
def test_pathological_literals_raise_genotype_error(field: str, pattern: str) -> None:
    # At Python's default recursion limit: where ast.parse gives up depends on it, and torch.compile (run
    # by other tests in the same process) raises it to 2000, where the 5000-deep literal parses and the
    # depth check answers instead
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        _assert_pathological(field, pattern)
    finally:
        sys.setrecursionlimit(old_limit)


def _assert_pathological(field: str, pattern: str) -> None:
    text = f"Genotype(normal={field}, reduce={P2})"
    assert len(text) <= MAX_LITERAL_CHARS
    with pytest.raises(GenotypeError, match=pattern) as info:
        Genotype.parse(text)
    assert len(str(info.value)) < 1000  # one readable line, not the whole input


def test_depth_limit_allows_every_valid_form() -> None:
    # list of nodes / node / pair / value, inside list(...): the deepest form a genotype needs
    text = f"Genotype(normal=list([[('skip_connect', 0)], [('none', -0), ('skip_connect', 2)]]), reduce={P2})"
    g = Genotype.parse(text)
    assert g.normal_cells[0].nodes == ((("skip_connect", 0),), (("none", 0), ("skip_connect", 2)))


def test_nodes_and_pairs_per_node_are_bounded() -> None:
    pairs = [("skip_connect", 0)] * (2 * MAX_NODES_PER_CELL)
    assert Genotype(normal=pairs, reduce=pairs).normal_cells[0].num_nodes == MAX_NODES_PER_CELL
    with pytest.raises(
        GenotypeError, match=rf"normal cell: {MAX_NODES_PER_CELL + 1} intermediate nodes; a cell"
    ):
        Genotype(normal=[*pairs, ("none", 0), ("none", 1)], reduce=pairs)
    node = [("skip_connect", 0)] * MAX_INPUTS_PER_NODE
    assert Genotype(normal=[node], reduce=[node]).normal_cells[0].inputs_per_node == (MAX_INPUTS_PER_NODE,)
    with pytest.raises(GenotypeError, match=rf"reduce cell, node 0: {MAX_INPUTS_PER_NODE + 1} \(op, input\)"):
        Genotype(normal=[node], reduce=[[*node, ("none", 1)]])
    with pytest.raises(GenotypeError, match="at most"):
        Genotype.parse(f"Genotype(normal={pairs + [('none', 0)] * 2!r}, reduce={P2})")


def test_huge_concat_range_is_refused_without_materialising_it() -> None:
    pairs = flat("skip_connect 0, none 1")
    with pytest.raises(GenotypeError, match=rf"normal cell concat: {10**30:,} entries"):
        Genotype(normal=pairs, normal_concat=range(10**30), reduce=pairs)
    with pytest.raises(GenotypeError, match=rf"reduce cell concat: {10**30 // 7 + 1:,} entries"):
        Genotype(normal=pairs, reduce=pairs, reduce_concat=range(10**30, 0, -7))
    with pytest.raises(GenotypeError, match=r"reduce cell concat: 4 entries, but a cell with 1 intermediate"):
        Genotype(normal=pairs, reduce=pairs, reduce_concat=[0, 1, 2, 2])


def test_deep_or_huge_json_raises_genotype_error() -> None:
    with pytest.raises(GenotypeError, match="nested too deeply"):
        Genotype.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GenotypeError, match="cannot be read"):
        Genotype.from_json('{"format": ' + "1" * 5000 + "}")
    deep: list = [("skip_connect", 0)]
    for _ in range(10_000):
        deep = [deep]
    data = {
        "format": GENOTYPE_JSON_FORMAT,
        "normal_cells": [{"nodes": [deep]}],
        "reduce_cell": {"nodes": [deep]},
    }
    with pytest.raises(
        GenotypeError, match=r"normal cell, node 0, position 0: expected an \(op_name"
    ) as info:
        Genotype.from_json(data)
    assert len(str(info.value)) < 1000


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    g = get_zoo_genotype("PC_DARTS_image")
    assert Genotype.parse("\ufeff" + str(g)) == g
    assert Genotype.from_json("\ufeff" + json.dumps(g.to_json())) == g
    assert load_genotype("\ufeff" + str(g)) == g
    json_file = tmp_path / "bom.json"
    json_file.write_bytes(b"\xef\xbb\xbf" + json.dumps(g.to_json(), indent=2).encode("utf-8"))
    assert Genotype.load_json(json_file) == g
    assert load_genotype(json_file) == g
    literal_file = tmp_path / "bom.txt"
    literal_file.write_bytes(b"\xef\xbb\xbf" + ZOO_LITERALS["PC_DARTS_image"].encode("utf-8") + b"\n")
    assert load_genotype(literal_file) == g
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "genotype.json").write_bytes(json_file.read_bytes())
    assert load_genotype(run_dir) == g


def test_save_json_layout_keeps_insertion_order(tmp_path: Path) -> None:
    g = VARIABLE
    text = g.save_json(tmp_path / "g.json").read_text(encoding="utf-8")
    assert text.startswith(
        '{\n  "format": "fastnas.genotype/1",\n  "normal_cells": [\n    {\n      "nodes": ['
    )
    assert text.endswith("}\n") and not text.endswith("\n\n")
    loaded = json.loads(text)
    assert list(loaded) == ["format", "normal_cells", "reduce_cell"]
    assert list(loaded["reduce_cell"]) == ["nodes", "concat"]  # not sorted


# --------------------------------------------------------------------------- load_genotype: files


@contextmanager
def fails_instead_of_hanging(seconds: int = 10) -> Iterator[None]:
    """Turn a blocking read (the bug these tests guard against) into a test failure."""

    def on_alarm(signum: int, frame: object) -> None:
        raise AssertionError(f"load_genotype blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_load_genotype_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "genotype.fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with (
        fails_instead_of_hanging(),
        pytest.raises(GenotypeError, match="is a FIFO .*not a regular file") as info,
    ):
        load_genotype(fifo)
    assert str(fifo) in str(info.value)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "genotype.json")
    with fails_instead_of_hanging(), pytest.raises(GenotypeError, match=r"genotype\.json' is a FIFO"):
        load_genotype(run_dir)
    with fails_instead_of_hanging(), pytest.raises(GenotypeError, match="not a regular file"):
        Genotype.load_json(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_load_genotype_refuses_a_device() -> None:
    # /dev/null, not /dev/zero: should the check break, reading /dev/zero would fill the memory
    with fails_instead_of_hanging(), pytest.raises(GenotypeError, match="'/dev/null' is a character device"):
        load_genotype("/dev/null")


def test_load_genotype_bounds_the_file_size(tmp_path: Path) -> None:
    g = get_zoo_genotype("DDSAS_cifar100")
    at_limit = tmp_path / "at_limit.json"
    body = json.dumps(g.to_json())
    at_limit.write_text(body + " " * (MAX_GENOTYPE_FILE_BYTES - len(body)), encoding="utf-8")
    assert at_limit.stat().st_size == MAX_GENOTYPE_FILE_BYTES
    assert load_genotype(at_limit) == g
    too_big = tmp_path / "too_big.txt"
    too_big.write_text(str(g) + " " * (MAX_GENOTYPE_FILE_BYTES + 1 - len(str(g))), encoding="utf-8")
    size = f"{MAX_GENOTYPE_FILE_BYTES + 1:,}"
    with pytest.raises(
        GenotypeError, match=rf"too_big\.txt' is {size} bytes; a genotype file may be at most"
    ):
        load_genotype(too_big)
    big_json = tmp_path / "big.json"
    big_json.write_text(body + " " * MAX_GENOTYPE_FILE_BYTES, encoding="utf-8")
    with pytest.raises(GenotypeError, match=r"big\.json' is .* bytes"):
        Genotype.load_json(big_json)


def test_load_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match="does not exist"):
        Genotype.load_json(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(GenotypeError, match=r"binary\.json' is not UTF-8 text"):
        load_genotype(binary)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"format": "other/1"}', encoding="utf-8")
    with pytest.raises(GenotypeError, match=r"wrong\.json: genotype JSON has format 'other/1'"):
        Genotype.load_json(wrong)
    with pytest.raises(GenotypeError, match=r"wrong\.json: genotype JSON has format 'other/1'"):
        load_genotype(wrong)
