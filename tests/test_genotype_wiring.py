"""Genotypes that would build something else than written are refused ("Nothing silently wrong", part 5).

Each class the fuzzing campaign found accepted (a concat that leaves intermediate nodes unused, a dangling
node, a cell of only ``none`` ops, unknown / misspelt / duplicate keys) is refused in every form that can
express it (constructor, literal, JSON text, a file through ``load_genotype``), with a one-line message
naming the problem and the cell, node or key; ``allow_dangling=True`` keeps dangling nodes on request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastnas.genotype import GENOTYPE_JSON_FORMAT, Genotype, GenotypeError, get_zoo_genotype, load_genotype
from fastnas.genotype_zoo import ZOO_ALIASES, ZOO_LITERALS, ZOO_NAMES
from fastnas.train.retrain_config import TrainConfig

Nodes = list[list[tuple[str, int]]]
Cells = dict[str, tuple[Nodes, list[int] | None]]  # cell keyword -> (nodes, concat or None = default)

V2 = get_zoo_genotype("DARTS_V2")
V2N: Nodes = [list(node) for node in V2.normal_cells[0].nodes]
V2R: Nodes = [list(node) for node in V2.reduce_cell.nodes]
# 3 nodes: node 2 (state 4) reads only the cell inputs
THREE: Nodes = [
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
    [("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("sep_conv_5x5", 1), ("max_pool_3x3", 0)],
]
# 5 nodes: node 4 (state 6) reads state 5 and input 0
FIVE: Nodes = [*V2N, [("sep_conv_3x3", 5), ("skip_connect", 0)]]


# ------------------------------------------------------------------------------------------- helpers


def _kwargs(cells: Cells) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (nodes, concat) in cells.items():
        out[key] = nodes
        if concat is not None:
            out[f"{key}_concat"] = concat
    return out


def _literal(cells: Cells) -> str:
    return "Genotype(" + ", ".join(f"{k}={v!r}" for k, v in _kwargs(cells).items()) + ")"


def _json_text(cells: Cells) -> str:
    def cell(key: str) -> dict[str, Any]:
        nodes, concat = cells[key]
        data: dict[str, Any] = {"nodes": [[list(pair) for pair in node] for node in nodes]}
        if concat is not None:
            data["concat"] = concat
        return data

    normals = [cell(key) for key in cells if key.startswith("normal")]
    return json.dumps(
        {"format": GENOTYPE_JSON_FORMAT, "normal_cells": normals, "reduce_cell": cell("reduce")}
    )


def _from_file(tmp_path: Path, text: str) -> Genotype:
    path = tmp_path / "genotype.json"
    path.write_text(text, encoding="utf-8")
    return load_genotype(tmp_path)  # a run directory: its genotype.json


Loader = Callable[[Cells, Path], Genotype]
LOADERS: dict[str, Loader] = {
    "constructor": lambda cells, _: Genotype(**_kwargs(cells)),
    "literal": lambda cells, _: Genotype.parse(_literal(cells)),
    "json": lambda cells, _: Genotype.from_json(_json_text(cells)),
    "json-dict": lambda cells, _: load_genotype(json.loads(_json_text(cells))),
    "run-dir": lambda cells, tmp: _from_file(tmp, _json_text(cells)),
}


def _refused(loader: str, cells: Cells, tmp_path: Path, fragments: list[str], **opt_in: Any) -> str:
    """Load ``cells`` the ``loader`` way: it must raise one line holding every fragment, in order."""
    with pytest.raises(GenotypeError) as info:
        if opt_in:
            Genotype(**_kwargs(cells), **opt_in)
        else:
            LOADERS[loader](cells, tmp_path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message
    assert re.search(".*".join(map(re.escape, fragments)), message), message
    return message


def _with(**cells: tuple[Nodes, list[int] | None]) -> Cells:
    """A genotype: DARTS_V2's cells, with the given ones replaced or added (``normal_2``, ...)."""
    base: Cells = {"normal": (V2N, None), "reduce": (V2R, None)}
    merged = {**base, **cells}
    normals = sorted((k for k in merged if k.startswith("normal")), key=lambda k: (k != "normal", k))
    return {**{k: merged[k] for k in normals}, "reduce": merged["reduce"]}


# --------------------------------------------------------------------------------- wiring: the cases

UNUSED_CONCAT = {
    "normal [2]": (
        _with(normal=(V2N, [2])),
        [
            "normal cell: intermediate nodes 1, 2, 3 (states 3, 4, 5) are dangling: not in the concat [2]",
            "concatenate them (the DARTS concat is every node: normal_concat=[2, 3, 4, 5])",
            "allow_dangling=True",
        ],
    ),
    "normal [5]": (
        _with(normal=(V2N, [5])),
        [
            "normal cell: intermediate nodes 1, 2 (states 3, 4) are dangling: not in the concat [5]",
        ],
    ),
    "normal [0, 1]": (
        _with(normal=(V2N, [0, 1])),
        [
            "normal cell: intermediate nodes 0, 1, 2, 3 (states 2, 3, 4, 5) are dangling:",
            "not in the concat [0, 1]",
            "0 and 1 in a concat are the cell inputs, not intermediate nodes",
        ],
    ),
    "normal_3 [1, 5]": (
        _with(normal_2=(V2N, None), normal_3=(V2N, [1, 5])),
        [
            "normal_3 cell: intermediate nodes 1, 2 (states 3, 4) are dangling: not in the concat [1, 5]",
            "cell inputs",
            "normal_3_concat=[2, 3, 4, 5]",
        ],
    ),
    "normal_2, 3 nodes, [4]": (
        _with(normal_2=(THREE, [4]), normal_3=(V2N, None)),
        [
            "normal_2 cell: intermediate nodes 0, 1 (states 2, 3) are dangling: not in the concat [4]",
            "normal_2_concat=[2, 3, 4]",
        ],
    ),
    "reduce, 5 nodes, [6]": (
        _with(reduce=(FIVE, [6])),
        [
            "reduce cell: intermediate nodes 1, 2 (states 3, 4) are dangling: not in the concat [6]",
            "reduce_concat=[2, 3, 4, 5, 6]",
        ],
    ),
}

DANGLING_NODE = {
    "last node left out": (
        _with(normal=(V2N, [2, 3, 4])),
        [
            "normal cell: intermediate node 3 (state 5) is dangling: not in the concat [2, 3, 4]",
            "concatenate it",
            "feed it to a concatenated node",
        ],
    ),
    "read only by a dangling node": (
        _with(normal=(FIVE, [2, 3, 4])),
        [
            "normal cell: intermediate nodes 3, 4 (states 5, 6) are dangling",
        ],
    ),
    "read only through none": (
        _with(normal=([*V2N[:2], [("none", 3), ("sep_conv_3x3", 0)]], [2, 4])),
        ["normal cell: intermediate node 1 (state 3) is dangling", "a 'none' op reading it adds only zeros"],
    ),
    "reduce, 3 nodes": (
        _with(reduce=(THREE, [2, 4])),
        [
            "reduce cell: intermediate node 1 (state 3) is dangling: not in the concat [2, 4]",
        ],
    ),
    "normal_2": (
        _with(normal_2=(V2N, [2, 3, 5]), normal_3=(V2N, None)),
        [
            "normal_2 cell: intermediate node 2 (state 4) is dangling",
        ],
    ),
    "node with only none inputs": (
        _with(
            normal=([V2N[0], [("none", 0), ("none", 1)], [("sep_conv_3x3", 3), ("skip_connect", 0)]], None)
        ),
        [
            "normal cell: intermediate node 1 (state 3) is cut off from the cell inputs:",
            "node 1 has only 'none'",
            "give node 1 a real op on an input",
        ],
    ),
    "chain from a none-only node": (
        _with(reduce=([[("none", 0)], [("sep_conv_3x3", 2)], [("max_pool_3x3", 0)]], None)),
        [
            "reduce cell: intermediate nodes 0, 1 (states 2, 3) are cut off from the cell inputs:",
            "node 0 has only 'none' pairs",
        ],
    ),
}

ALL_NONE = {
    "normal, 4 nodes": (
        _with(normal=([[("none", 0), ("none", 1)]] * 4, None)),
        ["normal cell: every op is 'none'"],
    ),
    "reduce, 1 node": (
        _with(reduce=([[("none", 0), ("none", 1)]], [2])),
        ["reduce cell: every op is 'none'"],
    ),
    "normal_3, 3 nodes, 1 input each": (
        _with(normal_2=(V2N, None), normal_3=([[("none", 1)], [("none", 2)], [("none", 0)]], None)),
        ["normal_3 cell: every op is 'none', so the cell outputs zeros"],
    ),
}


def _cases(table: dict[str, tuple[Cells, list[str]]]) -> list[Any]:
    return [
        pytest.param(loader, cells, fragments, id=f"{name}-{loader}")
        for name, (cells, fragments) in table.items()
        for loader in LOADERS
    ]


@pytest.mark.parametrize(("loader", "cells", "fragments"), _cases(UNUSED_CONCAT))
def test_concat_leaving_nodes_unused_is_refused(
    loader: str, cells: Cells, fragments: list[str], tmp_path: Path
) -> None:
    _refused(loader, cells, tmp_path, fragments)


@pytest.mark.parametrize(("loader", "cells", "fragments"), _cases(DANGLING_NODE))
def test_dangling_node_is_refused(loader: str, cells: Cells, fragments: list[str], tmp_path: Path) -> None:
    _refused(loader, cells, tmp_path, fragments)


@pytest.mark.parametrize(("loader", "cells", "fragments"), _cases(ALL_NONE))
def test_cell_of_only_none_ops_is_refused(
    loader: str, cells: Cells, fragments: list[str], tmp_path: Path
) -> None:
    _refused(loader, cells, tmp_path, fragments)
    # not even on request: such a cell builds nothing
    _refused(loader, cells, tmp_path, fragments, allow_dangling=True)


def test_cell_output_independent_of_its_inputs_is_refused_even_with_the_opt_in(tmp_path: Path) -> None:
    # node 0 is all 'none' and the only concatenated node; node 1 is real but dangling
    cells = _with(normal=([[("none", 0), ("none", 1)], [("sep_conv_3x3", 0), ("skip_connect", 2)]], [2]))
    _refused("constructor", cells, tmp_path, ["normal cell: intermediate node 1 (state 3) is dangling"])
    _refused(
        "constructor",
        cells,
        tmp_path,
        ["normal cell: no path through ops other than 'none' leads from the cell inputs to the concat [2]"],
        allow_dangling=True,
    )


# --------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("cells", "concat"),
    [
        pytest.param(_with(normal=(V2N, None)), [2, 3, 4, 5], id="missing concat = every node"),
        pytest.param(
            _with(
                normal=(
                    [
                        [("sep_conv_3x3", 0)],
                        [("skip_connect", 2)],
                        [("sep_conv_3x3", 3)],
                        [("dil_conv_3x3", 4)],
                    ],
                    [5],
                )
            ),
            [5],
            id="chain into one concatenated node",
        ),
        pytest.param(
            _with(normal=(FIVE, [2, 3, 4, 6])), [2, 3, 4, 6], id="node 3 reaches the output via node 4"
        ),
        pytest.param(
            _with(normal=(FIVE, [1, 2, 3, 4, 6])), [1, 2, 3, 4, 6], id="a cell input in a normal concat"
        ),
        pytest.param(
            _with(normal=([*V2N[:3], [("none", 4), ("sep_conv_3x3", 0)]], None)),
            [2, 3, 4, 5],
            id="a none op beside real ones",
        ),
    ],
)
def test_custom_concats_whose_nodes_all_reach_the_output_are_accepted(
    cells: Cells, concat: list[int]
) -> None:
    for loader in ("constructor", "literal", "json"):
        g = LOADERS[loader](cells, Path())
        assert g.normal_concat == concat and not g.allow_dangling
        assert all(cell.dangling_nodes() == () for _, cell in g.cells)
        assert Genotype.parse(g.to_literal()) == g and "allow_dangling" not in g.to_literal()


@pytest.mark.parametrize("name", [*ZOO_NAMES, *ZOO_ALIASES])
def test_every_zoo_genotype_still_loads(name: str) -> None:
    g = get_zoo_genotype(name)
    assert load_genotype(name) == g
    canonical = ZOO_ALIASES.get(name, name)
    assert Genotype.parse(ZOO_LITERALS[canonical]) == g
    assert Genotype.from_json(json.dumps(g.to_json())) == g
    assert not g.allow_dangling and all(cell.dangling_nodes() == () for _, cell in g.cells)


# ----------------------------------------------------------------------------------------- opt-in


def test_allow_dangling_keeps_a_dangling_node_in_every_form(tmp_path: Path) -> None:
    cells = _with(normal=(V2N, [2, 3, 4]), normal_2=(THREE, [4]), normal_3=(V2N, None))
    expected = Genotype(**_kwargs(cells), allow_dangling=True)
    assert expected.allow_dangling
    assert expected.normal_cells[0].dangling_nodes() == (3,) and expected.normal_cells[
        1
    ].dangling_nodes() == (0, 1)
    assert expected.normal_concat == [2, 3, 4] and expected.normal_2_concat == [4]
    literal, text = _literal(cells), _json_text(cells)
    loaded = [
        Genotype.parse(literal, allow_dangling=True),
        Genotype.parse(literal[:-1] + ", allow_dangling=True)"),  # the opt-in inside the literal
        Genotype.from_json(text, allow_dangling=True),
        Genotype.from_json({**json.loads(text), "allow_dangling": True}),  # ... inside the JSON
        load_genotype(literal, allow_dangling=True),
        load_genotype(json.loads(text), allow_dangling=True),
        Genotype.from_cells(expected.normal_cells, expected.reduce_cell, allow_dangling=True),
    ]
    (tmp_path / "genotype.json").write_text(text, encoding="utf-8")
    loaded.append(load_genotype(tmp_path, allow_dangling=True))
    loaded.append(Genotype.load_json(tmp_path / "genotype.json", allow_dangling=True))
    for g in loaded:
        assert g == expected and g.allow_dangling
    # the opt-in is written out, so a resumed run or a checkpoint reads the genotype back unasked
    printed = expected.to_literal()
    assert printed.endswith(", allow_dangling=True)")
    assert Genotype.parse(printed).allow_dangling and load_genotype(printed) == expected
    assert expected.to_json()["allow_dangling"] is True
    run = tmp_path / "run"
    expected.save_json(run / "genotype.json")
    assert load_genotype(run) == expected and load_genotype(run).allow_dangling
    # without it, each form refuses again
    for loader in LOADERS:
        _refused(loader, cells, tmp_path, ["normal cell: intermediate node 3 (state 5) is dangling"])


def test_allow_dangling_is_not_recorded_when_nothing_dangles() -> None:
    g = Genotype(normal=V2.normal, reduce=V2.reduce, allow_dangling=True)
    assert g == V2 and not g.allow_dangling
    assert g.to_literal() == V2.to_literal() and g.to_json() == V2.to_json()
    assert load_genotype("DARTS_V2", allow_dangling=True) == V2


def test_allow_dangling_reaches_the_train_command() -> None:
    """``fastnas train --genotype`` takes the opt-in inside the genotype it is given."""
    literal = _literal(_with(normal=(V2N, [2, 3, 4])))
    with pytest.raises(GenotypeError, match=r"normal cell: intermediate node 3 \(state 5\) is dangling"):
        TrainConfig(genotype=literal, dataset="digits", device="cpu").resolved()
    opted_in = literal[:-1] + ", allow_dangling=True)"
    resolved = TrainConfig(genotype=opted_in, dataset="digits", device="cpu").resolved()
    assert resolved.load_genotype().allow_dangling


@pytest.mark.parametrize(
    ("load", "pattern"),
    [
        (
            lambda: Genotype(normal=V2.normal, reduce=V2.reduce, allow_dangling=1),  # type: ignore[arg-type]
            r"^Genotype: allow_dangling must be True or False, got 1$",
        ),
        (
            lambda: Genotype.parse(V2.to_literal()[:-1] + ", allow_dangling=1)"),
            r"^genotype literal: allow_dangling= must be True or False, got '1'$",
        ),
        (
            lambda: Genotype.from_json({**V2.to_json(), "allow_dangling": "yes"}),
            r"^genotype JSON 'allow_dangling' must be true or false, got 'yes'$",
        ),
    ],
)
def test_allow_dangling_must_be_a_bool(load: Callable[[], object], pattern: str) -> None:
    with pytest.raises(GenotypeError, match=pattern):
        load()


# -------------------------------------------------------------------------------------------- keys


def _obj(*pairs: tuple[str, str]) -> str:
    """A JSON object from ``(key, value as JSON text)`` pairs, repeats kept."""
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


_FORMAT = ("format", json.dumps(GENOTYPE_JSON_FORMAT))
_NORMAL = json.dumps(V2.to_json()["normal_cells"][0])
_REDUCE = json.dumps(V2.to_json()["reduce_cell"])
_NODES = json.dumps(V2.to_json()["reduce_cell"]["nodes"])


def _genotype_json(*extra: tuple[str, str], normal: str = _NORMAL, reduce: str = _REDUCE) -> str:
    return _obj(_FORMAT, ("normal_cells", f"[{normal}]"), ("reduce_cell", reduce), *extra)


TEXT_LOADERS: dict[str, Callable[[str, Path], Genotype]] = {
    "text": lambda text, _: Genotype.from_json(text) if text.startswith("{") else Genotype.parse(text),
    "load_genotype": lambda text, _: load_genotype(json.loads(text) if text.startswith("{") else text),
    "file": lambda text, tmp: _text_file(tmp, text),
}


def _text_file(tmp_path: Path, text: str) -> Genotype:
    path = tmp_path / ("g.json" if text.startswith("{") else "g.txt")
    path.write_text(text, encoding="utf-8")
    return load_genotype(path)


def _key_cases(
    table: dict[str, tuple[str, str]], loaders: tuple[str, ...] = tuple(TEXT_LOADERS)
) -> list[Any]:
    return [
        pytest.param(loader, text, pattern, id=f"{name}-{loader}")
        for name, (text, pattern) in table.items()
        for loader in loaders
    ]


def _refused_text(loader: str, text: str, pattern: str, tmp_path: Path) -> None:
    with pytest.raises(GenotypeError) as info:
        TEXT_LOADERS[loader](text, tmp_path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message
    assert re.search(pattern, message), message


UNKNOWN_KEY = {
    "JSON genotype": (
        _genotype_json(("comment", '"my net"')),
        r"genotype JSON: the genotype object has the unknown key 'comment'; its keys are 'format', "
        r"'normal_cells', 'reduce_cell', 'allow_dangling' \(an unknown key would be ignored\)",
    ),
    "JSON cell": (
        _genotype_json(reduce=_obj(("nodes", _NODES), ("concat", "[2, 3, 4, 5]"), ("op_count", "8"))),
        r"genotype JSON: the reduce cell has the unknown key 'op_count'; its keys are 'nodes', 'concat'",
    ),
    "JSON second normal cell": (
        _obj(
            _FORMAT,
            ("normal_cells", f"[{_NORMAL}, {_obj(('nodes', _NODES), ('stride', '1'))}]"),
            ("reduce_cell", _REDUCE),
        ),
        r"the normal_2 cell has the unknown key 'stride'",
    ),
    "literal keyword": (
        V2.to_literal()[:-1] + ", comment='my net')",
        r"Genotype got an unexpected keyword 'comment'; accepted: normal, normal_concat",
    ),
}

MISSPELT_KEY = {
    "JSON Concat": (
        _genotype_json(reduce=_obj(("nodes", _NODES), ("Concat", "[2]"))),
        r"the reduce cell has the unknown key 'Concat' \(did you mean 'concat'\?\)",
    ),
    "JSON Nodes": (
        _genotype_json(normal=_obj(("Nodes", _NODES))),
        r"the normal cell has the unknown key 'Nodes' \(did you mean 'nodes'\?\)",
    ),
    "JSON reduce_cells": (
        _obj(_FORMAT, ("normal_cells", f"[{_NORMAL}]"), ("reduce_cells", _REDUCE)),
        r"the genotype object has the unknown key 'reduce_cells' \(did you mean 'reduce_cell'\?\)",
    ),
    "JSON allow_danglng": (
        _genotype_json(("allow_danglng", "true")),
        r"unknown key 'allow_danglng' \(did you mean 'allow_dangling'\?\)",
    ),
    "literal Normal_concat": (
        V2.to_literal().replace("normal_concat=", "Normal_concat="),
        r"unexpected keyword 'Normal_concat' \(did you mean 'normal_concat'\?\)",
    ),
    "literal reduce_conact": (
        V2.to_literal().replace("reduce_concat=", "reduce_conact="),
        r"unexpected keyword 'reduce_conact' \(did you mean 'reduce_concat'\?\)",
    ),
}

DUPLICATE_KEY = {
    "JSON reduce_cell": (
        _genotype_json(("reduce_cell", _obj(("nodes", _NODES)))),
        r"genotype JSON has the key 'reduce_cell' twice in one object \(keys \['format', "
        r"'normal_cells', 'reduce_cell', 'reduce_cell'\]\); JSON would keep only the last value",
    ),
    "JSON concat": (
        _genotype_json(reduce=_obj(("nodes", _NODES), ("concat", "[2, 3, 4, 5]"), ("concat", "[5]"))),
        r"has the key 'concat' twice in one object \(keys \['nodes', 'concat', 'concat'\]\)",
    ),
    "JSON format": (
        _obj(_FORMAT, _FORMAT, ("normal_cells", f"[{_NORMAL}]"), ("reduce_cell", _REDUCE)),
        r"has the key 'format' twice",
    ),
    "literal keyword": (
        V2.to_literal()[:-1] + ", reduce_concat=[5])",
        r"field 'reduce_concat' given twice \(as keyword reduce_concat= and as keyword",
    ),
}


@pytest.mark.parametrize(("loader", "text", "pattern"), _key_cases(UNKNOWN_KEY))
def test_unknown_key_is_refused(loader: str, text: str, pattern: str, tmp_path: Path) -> None:
    _refused_text(loader, text, pattern, tmp_path)


@pytest.mark.parametrize(("loader", "text", "pattern"), _key_cases(MISSPELT_KEY))
def test_misspelt_key_is_refused_with_a_suggestion(
    loader: str, text: str, pattern: str, tmp_path: Path
) -> None:
    _refused_text(loader, text, pattern, tmp_path)


# a dict (load_genotype(json.loads(...))) cannot hold a key twice: only text forms
@pytest.mark.parametrize(("loader", "text", "pattern"), _key_cases(DUPLICATE_KEY, ("text", "file")))
def test_duplicate_key_is_refused(loader: str, text: str, pattern: str, tmp_path: Path) -> None:
    _refused_text(loader, text, pattern, tmp_path)


def test_duplicate_key_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "genotype.json"
    path.write_text(DUPLICATE_KEY["JSON concat"][0], encoding="utf-8")
    for load in (Genotype.load_json, load_genotype):
        with pytest.raises(
            GenotypeError, match=rf"^{re.escape(str(path))}: genotype JSON has the key 'concat'"
        ):
            load(path)


def test_json_null_concat_is_refused_and_a_missing_one_means_every_node() -> None:
    with pytest.raises(GenotypeError, match=r"^genotype JSON: reduce 'concat' is null; give the list"):
        Genotype.from_json(_genotype_json(reduce=_obj(("nodes", _NODES), ("concat", "null"))))
    assert Genotype.from_json(_genotype_json(reduce=_obj(("nodes", _NODES)))) == V2
