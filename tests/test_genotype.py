"""Tests for fastnas.genotype and the published-genotype zoo (REFERENCE.md sections 1, 3, 6, 9)."""

from __future__ import annotations

import json
import re
from collections import namedtuple
from pathlib import Path

import pytest

from fastnas.genotype import GENOTYPE_JSON_FORMAT, CellGenotype, Genotype, GenotypeError, load_genotype
from fastnas.genotype_zoo import ZOO_LITERALS, ZOO_NAMES, get_zoo_genotype, resolve_zoo_name

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
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} not found (shared reference facts are not checked out next to the repo)")
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
