"""Genotypes: the discrete architecture a search derives (REFERENCE.md sections 1, 3, 6, 9).

A :class:`Genotype` holds one or more normal-cell types (thesis seed 004: one per stage,
REFERENCE.md section 9) and one reduction cell. Each cell is a :class:`CellGenotype`: for every
intermediate node the ``(op_name, input_index)`` pairs feeding it (any number >= 1 of them, as
EnTranNAS-DST derives, section 6) and the indices of the states concatenated into the cell output.

Input indices follow DARTS (section 1): 0 = output of cell k-2, 1 = output of cell k-1, j >= 2 =
intermediate node j-2; intermediate node n (0-based) may only read indices < n + 2.

The class is a drop-in for the DARTS ``Genotype`` namedtuple: ``Genotype(normal=[...],
normal_concat=range(2, 6), reduce=[...], reduce_concat=[2, 3, 4, 5])`` works, ``.normal`` and
friends return the flat DARTS lists, and ``str(genotype)`` prints the DARTS literal, which
:meth:`Genotype.parse` reads back (safely, with :mod:`ast`; nothing is evaluated).
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

from fastnas.ops import available_ops, is_registered

__all__ = [
    "GENOTYPE_JSON_FORMAT",
    "CellGenotype",
    "Genotype",
    "GenotypeError",
    "load_genotype",
]

GENOTYPE_JSON_FORMAT = "fastnas.genotype/1"
"""Value of the ``"format"`` key written by :meth:`Genotype.to_json` (bumped on schema changes)."""

Pair = tuple[str, int]
Node = tuple[Pair, ...]
CellKind = Literal["normal", "reduce"]

_EXTRA_NORMAL = re.compile(r"^normal_(\d+)(_concat)?$")
_DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


class GenotypeError(ValueError):
    """A genotype is malformed; the message says what is wrong and where (cell, node, position)."""


# --------------------------------------------------------------------------------------------- cells


def _known_ops() -> str:
    return ", ".join(available_ops())


def _as_index(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return None
    return int(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_pair(raw: Any, node: int, pos: int, where: str) -> Pair:
    """Validate one ``(op_name, input_index)`` pair of intermediate node ``node``."""
    loc = f"{where}, node {node}, position {pos}"
    if not _is_sequence(raw) or len(raw) != 2:
        raise GenotypeError(
            f"{loc}: expected an (op_name, input_index) pair, got {raw!r}; write e.g. ('sep_conv_3x3', 0)"
        )
    op, idx = raw
    if not isinstance(op, str):
        raise GenotypeError(f"{loc}: op name must be a string, got {op!r} in {tuple(raw)!r}")
    if not is_registered(op):
        raise GenotypeError(f"{loc}: unknown op {op!r}; known ops are: {_known_ops()}")
    index = _as_index(idx)
    if index is None:
        raise GenotypeError(f"{loc}: input index must be an int, got {idx!r} in {tuple(raw)!r}")
    if index < 0:
        raise GenotypeError(f"{loc}: negative input index {index} for op {op!r}; indices start at 0")
    if index >= node + 2:
        raise GenotypeError(
            f"{loc}: input index {index} for op {op!r} is not earlier than its node: node {node} "
            f"(state {node + 2}) may only read indices 0..{node + 1} "
            "(0 = cell k-2, 1 = cell k-1, j >= 2 = intermediate node j-2)"
        )
    return (op, index)


def _check_nodes(raw: Any, where: str) -> tuple[Node, ...]:
    """Validate a nested node list: one sequence of pairs per intermediate node."""
    if not _is_sequence(raw):
        raise GenotypeError(f"{where}: expected a list of nodes, got {type(raw).__name__} {raw!r}")
    if len(raw) == 0:
        raise GenotypeError(f"{where}: the cell has no nodes; give at least one intermediate node")
    nodes = []
    for n, node in enumerate(raw):
        if not _is_sequence(node):
            raise GenotypeError(f"{where}, node {n}: expected a list of (op, input) pairs, got {node!r}")
        if len(node) == 0:
            raise GenotypeError(f"{where}, node {n}: empty node; every node needs at least one input pair")
        nodes.append(tuple(_check_pair(p, n, i, where) for i, p in enumerate(node)))
    return tuple(nodes)


def _check_concat(raw: Any, num_nodes: int, where: str) -> tuple[int, ...]:
    """Validate concat indices against a cell with ``num_nodes`` intermediate nodes."""
    name = f"{where} concat"
    if raw is None:
        return tuple(range(2, num_nodes + 2))
    if isinstance(raw, range):
        raw = list(raw)
    if not _is_sequence(raw):
        raise GenotypeError(f"{name}: expected a list of state indices or a range, got {raw!r}")
    if len(raw) == 0:
        raise GenotypeError(f"{name}: empty; list the states forming the cell output, e.g. [2, 3, 4, 5]")
    out: list[int] = []
    for pos, value in enumerate(raw):
        index = _as_index(value)
        if index is None:
            raise GenotypeError(f"{name}, position {pos}: expected an int, got {value!r}")
        if not 0 <= index < num_nodes + 2:
            raise GenotypeError(
                f"{name}, position {pos}: index {index} out of range; a cell with {num_nodes} "
                f"intermediate nodes has states 0..{num_nodes + 1}"
            )
        if index in out:
            raise GenotypeError(f"{name}, position {pos}: index {index} appears twice")
        out.append(index)
    return tuple(out)


def _looks_nested(raw: Sequence[Any]) -> bool:
    """A node list is nested if some entry is empty or is a sequence of sequences."""
    return any(_is_sequence(e) and (len(e) == 0 or _is_sequence(e[0])) for e in raw)


def _group_pairs(raw: Any, where: str) -> Any:
    """Turn a flat DARTS pair list (two per node) into a nested list; nested lists pass through."""
    if not _is_sequence(raw):
        raise GenotypeError(
            f"{where}: expected a list of (op, input) pairs or of per-node pair lists, "
            f"got {type(raw).__name__} {raw!r}"
        )
    if len(raw) == 0 or _looks_nested(raw):
        return raw
    if len(raw) % 2:
        raise GenotypeError(
            f"{where}: flat list has an odd number of entries ({len(raw)}); a flat DARTS list holds "
            "exactly two (op, input) pairs per node - use one list per node for other input counts"
        )
    return [raw[i : i + 2] for i in range(0, len(raw), 2)]


@dataclass(frozen=True)
class CellGenotype:
    """One cell: per intermediate node its ``(op_name, input_index)`` pairs, and the concat indices.

    Direct construction validates and normalises (lists become tuples). Use :meth:`from_pairs`
    for the flat DARTS form.
    """

    nodes: tuple[Node, ...]
    concat: tuple[int, ...]

    def __post_init__(self) -> None:
        nodes = _check_nodes(self.nodes, "cell")
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "concat", _check_concat(self.concat, len(nodes), "cell"))

    @classmethod
    def from_pairs(cls, pairs: Any, concat: Any = None, *, name: str = "cell") -> CellGenotype:
        """Build from a flat DARTS pair list (two per node) or a nested per-node list.

        ``concat`` defaults to every intermediate node; ``name`` is used in error messages.
        """
        nodes = _check_nodes(_group_pairs(pairs, name), name)
        return cls(nodes, _check_concat(concat, len(nodes), name))

    @property
    def num_nodes(self) -> int:
        """Number of intermediate nodes."""
        return len(self.nodes)

    @property
    def pairs(self) -> list[Pair]:
        """The flat DARTS view: all pairs in node order."""
        return [pair for node in self.nodes for pair in node]

    @property
    def inputs_per_node(self) -> tuple[int, ...]:
        return tuple(len(node) for node in self.nodes)

    @property
    def is_darts_form(self) -> bool:
        """True when every node has exactly two inputs (printable as a flat DARTS list)."""
        return all(len(node) == 2 for node in self.nodes)

    def ops_used(self) -> list[str]:
        """Distinct op names in this cell, sorted."""
        return sorted({op for node in self.nodes for op, _ in node})

    def count_op(self, name: str) -> int:
        """How many edges of this cell use op ``name``."""
        return sum(op == name for node in self.nodes for op, _ in node)

    def literal_nodes(self) -> str:
        """The node list as printed in a literal: flat if :attr:`is_darts_form`, else nested."""
        if self.is_darts_form:
            return _fmt_pairs(self.pairs)
        return "[" + ", ".join(_fmt_pairs(node) for node in self.nodes) + "]"

    def to_json(self) -> dict[str, Any]:
        """``{"nodes": [[[op, input], ...] per node], "concat": [...]}``."""
        nodes = [[[op, idx] for op, idx in node] for node in self.nodes]
        return {"nodes": nodes, "concat": list(self.concat)}


def _fmt_pairs(pairs: Iterable[Pair]) -> str:
    return "[" + ", ".join(f"({op!r}, {idx})" for op, idx in pairs) + "]"


# ----------------------------------------------------------------------------------------- genotype


def _normal_key(stage: int) -> str:
    """Keyword of normal-cell type ``stage`` (0-based): ``normal``, ``normal_2``, ``normal_3``, ..."""
    return "normal" if stage == 0 else f"normal_{stage + 1}"


@dataclass(frozen=True, init=False, repr=False)
class Genotype:
    """A derived architecture: ``normal_cells`` (one per normal-cell type, >= 1) and ``reduce_cell``.

    Construct like the DARTS namedtuple, ``Genotype(normal, normal_concat, reduce, reduce_concat)``
    (flat pair lists, or nested per-node lists for other input counts; a missing concat means all
    intermediate nodes), with extra normal-cell types as ``normal_2=..., normal_2_concat=...``; or
    from cells with :meth:`from_cells`. Frozen, hashable, compared by structure.
    """

    normal_cells: tuple[CellGenotype, ...]
    reduce_cell: CellGenotype

    def __init__(
        self,
        normal: Any = None,
        normal_concat: Any = None,
        reduce: Any = None,
        reduce_concat: Any = None,
        **extra_normals: Any,
    ) -> None:
        if normal is None:
            raise GenotypeError("Genotype needs normal=[...]: the (op, input) pairs of the normal cell")
        if reduce is None:
            raise GenotypeError("Genotype needs reduce=[...]: the (op, input) pairs of the reduction cell")
        stages: dict[int, dict[str, Any]] = {}
        for key, value in extra_normals.items():
            match = _EXTRA_NORMAL.match(key)
            if match is None or int(match.group(1)) < 2:
                raise GenotypeError(
                    f"Genotype got an unexpected keyword {key!r}; accepted: normal, normal_concat, reduce, "
                    "reduce_concat, and normal_2, normal_2_concat, normal_3, ... for extra normal-cell types"
                )
            stages.setdefault(int(match.group(1)), {})["concat" if match.group(2) else "pairs"] = value
        normals = [CellGenotype.from_pairs(normal, normal_concat, name="normal cell")]
        for number in range(2, len(stages) + 2):
            parts = stages.get(number)
            if parts is None or "pairs" not in parts:
                missing = f"normal_{number}"
                raise GenotypeError(
                    f"Genotype: extra normal-cell types must be numbered 2, 3, ... without gaps and each "
                    f"needs its pair list; {missing}= is missing (got keywords {sorted(extra_normals)})"
                )
            cell_name = f"{_normal_key(number - 1)} cell"
            normals.append(CellGenotype.from_pairs(parts["pairs"], parts.get("concat"), name=cell_name))
        reduce_cell = CellGenotype.from_pairs(reduce, reduce_concat, name="reduce cell")
        object.__setattr__(self, "normal_cells", tuple(normals))
        object.__setattr__(self, "reduce_cell", reduce_cell)

    @classmethod
    def from_cells(cls, normals: CellGenotype | Sequence[CellGenotype], reduce: CellGenotype) -> Genotype:
        """Build from structured cells: one normal cell or a sequence of them, and the reduction cell."""
        normal_list = [normals] if isinstance(normals, CellGenotype) else list(normals)
        if not normal_list:
            raise GenotypeError("Genotype.from_cells: give at least one normal cell")
        for i, cell in enumerate([*normal_list, reduce]):
            if not isinstance(cell, CellGenotype):
                kind = type(cell).__name__
                raise GenotypeError(f"Genotype.from_cells: cell {i} is a {kind}, not a CellGenotype")
        kwargs: dict[str, Any] = {}
        for stage, cell in enumerate(normal_list):
            key = _normal_key(stage)
            kwargs[key] = [list(node) for node in cell.nodes]
            kwargs[f"{key}_concat"] = cell.concat
        return cls(**kwargs, reduce=[list(node) for node in reduce.nodes], reduce_concat=reduce.concat)

    # DARTS views ---------------------------------------------------------------------------------

    @property
    def normal(self) -> list[Pair]:
        """Flat ``(op, input)`` list of the first normal cell (the DARTS ``normal`` field)."""
        return self.normal_cells[0].pairs

    @property
    def normal_concat(self) -> list[int]:
        return list(self.normal_cells[0].concat)

    @property
    def reduce(self) -> list[Pair]:
        """Flat ``(op, input)`` list of the reduction cell (the DARTS ``reduce`` field)."""
        return self.reduce_cell.pairs

    @property
    def reduce_concat(self) -> list[int]:
        return list(self.reduce_cell.concat)

    def __getattr__(self, name: str) -> Any:
        # Only called for missing attributes: serves normal_2, normal_2_concat, ...
        match = _EXTRA_NORMAL.match(name)
        if match is not None and int(match.group(1)) >= 2 and "normal_cells" in self.__dict__:
            stage = int(match.group(1)) - 1
            if stage < len(self.normal_cells):
                cell = self.normal_cells[stage]
                return list(cell.concat) if match.group(2) else cell.pairs
            raise AttributeError(f"{name!r}: this genotype has {len(self.normal_cells)} normal-cell type(s)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # structured access -----------------------------------------------------------------------------

    @property
    def num_normal_types(self) -> int:
        return len(self.normal_cells)

    @property
    def cells(self) -> tuple[tuple[str, CellGenotype], ...]:
        """``(name, cell)`` for every cell type: ``normal``, ``normal_2``, ..., ``reduce``."""
        named = [(_normal_key(s), c) for s, c in enumerate(self.normal_cells)]
        return (*named, ("reduce", self.reduce_cell))

    def cell(self, kind: CellKind, stage: int = 0) -> CellGenotype:
        """The cell of ``kind`` used in network stage ``stage`` (0-based).

        A genotype with a single normal-cell type uses it in every stage; with several types,
        ``stage`` must be smaller than :attr:`num_normal_types`. There is one reduction cell.
        """
        if kind == "reduce":
            return self.reduce_cell
        if kind != "normal":
            raise GenotypeError(f"cell kind must be 'normal' or 'reduce', got {kind!r}")
        if stage < 0:
            raise GenotypeError(f"stage must be >= 0, got {stage}")
        if len(self.normal_cells) == 1:
            return self.normal_cells[0]
        if stage >= len(self.normal_cells):
            raise GenotypeError(
                f"stage {stage} has no normal cell: this genotype has {len(self.normal_cells)} "
                f"normal-cell types (stages 0..{len(self.normal_cells) - 1})"
            )
        return self.normal_cells[stage]

    def _cells_named(self, cell: str) -> list[CellGenotype]:
        if cell == "all":
            return [c for _, c in self.cells]
        for name, c in self.cells:
            if name == cell:
                return [c]
        names = ", ".join(name for name, _ in self.cells)
        raise GenotypeError(f"unknown cell {cell!r}; this genotype has: {names} (or 'all')")

    def ops_used(self, cell: str = "all") -> list[str]:
        """Sorted distinct op names in ``cell`` (``normal``, ``normal_2``, ..., ``reduce`` or ``all``)."""
        return sorted({op for c in self._cells_named(cell) for op in c.ops_used()})

    def count_op(self, name: str, cell: str = "normal") -> int:
        """Edges using op ``name`` in ``cell`` (``normal``, ``normal_N``, ``reduce``, or ``all`` types)."""
        if not is_registered(name):
            raise GenotypeError(f"unknown op {name!r}; known ops are: {_known_ops()}")
        return sum(c.count_op(name) for c in self._cells_named(cell))

    # literal ---------------------------------------------------------------------------------------

    def to_literal(self) -> str:
        """The DARTS literal ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)``.

        Cells whose nodes all have two inputs print flat; others print one list per node. Extra
        normal-cell types follow as ``normal_2=..., normal_2_concat=...``.
        """
        parts = []
        for name, c in (self.cells[0], self.cells[-1], *self.cells[1:-1]):
            parts.append(f"{name}={c.literal_nodes()}")
            parts.append(f"{name}_concat={list(c.concat)}")
        return "Genotype(" + ", ".join(parts) + ")"

    def __str__(self) -> str:
        return self.to_literal()

    def __repr__(self) -> str:
        return self.to_literal()

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Parse a DARTS literal (``[NAME = ]Genotype(normal=..., ...)``) without evaluating anything."""
        return _parse_literal(text)[1]

    # JSON ------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"format", "normal_cells": [{"nodes", "concat"}, ...], "reduce_cell"}``.

        ``nodes`` is one list per intermediate node of ``[op_name, input_index]`` pairs.
        """
        return {
            "format": GENOTYPE_JSON_FORMAT,
            "normal_cells": [c.to_json() for c in self.normal_cells],
            "reduce_cell": self.reduce_cell.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Genotype:
        """Inverse of :meth:`to_json` (also accepts the JSON text)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise GenotypeError(f"genotype JSON is not valid JSON: {err}") from None
        if not isinstance(data, Mapping):
            raise GenotypeError(f"genotype JSON must be an object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != GENOTYPE_JSON_FORMAT:
            raise GenotypeError(
                f"genotype JSON has format {fmt!r}; expected {GENOTYPE_JSON_FORMAT!r} (as written by to_json)"
            )
        missing = [k for k in ("normal_cells", "reduce_cell") if k not in data]
        if missing:
            raise GenotypeError(f"genotype JSON is missing key(s) {missing}")
        normals = data["normal_cells"]
        if not isinstance(normals, list) or not normals:
            raise GenotypeError("genotype JSON 'normal_cells' must be a non-empty list of cells")
        kwargs: dict[str, Any] = {}
        for stage, c in enumerate(normals):
            key = _normal_key(stage)
            kwargs[key], kwargs[f"{key}_concat"] = _json_cell(c, key)
        kwargs["reduce"], kwargs["reduce_concat"] = _json_cell(data["reduce_cell"], "reduce")
        return cls(**kwargs)

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> Genotype:
        """Read a file written by :meth:`save_json`."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as err:
            raise GenotypeError(f"{path}: not valid JSON: {err}") from None


def _json_cell(data: Any, key: str) -> tuple[Any, Any]:
    if not isinstance(data, Mapping) or "nodes" not in data:
        raise GenotypeError(f"genotype JSON: the {key} cell must be an object with 'nodes' and 'concat'")
    nodes = data["nodes"]
    if not isinstance(nodes, list) or any(not isinstance(node, list) for node in nodes):
        raise GenotypeError(f"genotype JSON: {key} 'nodes' must be a list with one list of pairs per node")
    return nodes, data.get("concat")


# --------------------------------------------------------------------------------------------- parse


def _literal_value(node: ast.expr, field: str) -> Any:
    """Convert a literal AST node (lists, tuples, str/int constants, ``range(...)``) to Python."""
    if isinstance(node, ast.Constant) and type(node.value) in (str, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal_value(elt, field) for elt in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal_value(node.operand, field)
        if isinstance(value, int):
            return -value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("range", "list")
        and not node.keywords
    ):
        args = [_literal_value(a, field) for a in node.args]
        if node.func.id == "range" and 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args):
            return list(range(*args))
        if node.func.id == "list" and len(args) == 1 and isinstance(args[0], list):
            return args[0]
    raise GenotypeError(
        f"genotype literal, field {field!r} (line {node.lineno}, col {node.col_offset}): unsupported "
        f"expression {ast.unparse(node)!r}; only lists/tuples of ('op', int) pairs, ints and range(a, b) "
        "are allowed"
    )


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _parse_literal(text: str) -> tuple[str | None, Genotype]:
    """Parse ``[NAME = ]Genotype(...)``; returns ``(NAME or None, genotype)``."""
    if not isinstance(text, str):
        raise GenotypeError(f"Genotype.parse expects a string, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise GenotypeError("genotype literal is empty; expected Genotype(normal=[...], ...)")
    try:
        module = ast.parse(source, mode="exec")
    except SyntaxError as err:
        raise GenotypeError(
            f"genotype literal is not valid Python syntax ({err.msg}, line {err.lineno}); "
            "expected Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])"
        ) from None
    if len(module.body) != 1:
        raise GenotypeError(
            "genotype literal must be exactly one Genotype(...) expression, "
            f"found {len(module.body)} statements"
        )
    stmt = module.body[0]
    name: str | None = None
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        name, call = stmt.targets[0].id, stmt.value
    elif isinstance(stmt, ast.Expr):
        call = stmt.value
    else:
        raise GenotypeError(
            "genotype literal must be 'Genotype(...)' or 'NAME = Genotype(...)', "
            f"got {ast.unparse(stmt)[:80]!r}"
        )
    if not isinstance(call, ast.Call) or _call_name(call.func) != "Genotype":
        raise GenotypeError(f"genotype literal must be a Genotype(...) call, got {ast.unparse(call)[:80]!r}")
    if len(call.args) > len(_DARTS_FIELDS):
        raise GenotypeError(f"Genotype(...) takes at most {len(_DARTS_FIELDS)} positional arguments")
    kwargs: dict[str, Any] = {}
    for field, arg in zip(_DARTS_FIELDS, call.args, strict=False):
        kwargs[field] = _literal_value(arg, field)
    for kw in call.keywords:
        if kw.arg is None:
            raise GenotypeError("genotype literal: '**' arguments are not allowed; use keyword=value")
        if kw.arg in kwargs:
            raise GenotypeError(f"genotype literal: field {kw.arg!r} given twice")
        kwargs[kw.arg] = _literal_value(kw.value, kw.arg)
    return name, Genotype(**kwargs)


# ------------------------------------------------------------------------------------- load_genotype


def _accepted_forms() -> str:
    from fastnas.genotype_zoo import ZOO_NAMES

    return (
        "accepted: a Genotype; a zoo name (" + ", ".join(ZOO_NAMES) + ", case-insensitive); a literal "
        "'Genotype(normal=[...], ...)'; a genotype JSON dict; a path to a JSON file written by "
        "Genotype.save_json or to a text file holding a literal; a run directory with genotype.json"
    )


def _from_file(path: Path) -> Genotype:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        return Genotype.load_json(path)
    try:
        return Genotype.parse(text)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


def load_genotype(source: Any) -> Genotype:
    """Get a :class:`Genotype` from any common form.

    ``source`` may be a Genotype (returned as is), a zoo name (``"DARTS_V2"``, case-insensitive), a
    literal string, a JSON dict, a path to a JSON file (:meth:`Genotype.save_json`) or to a text file
    holding a literal, a run directory containing ``genotype.json``, or a DARTS-style namedtuple.
    """
    from fastnas.genotype_zoo import resolve_zoo_name

    if isinstance(source, Genotype):
        return source
    if isinstance(source, Mapping):
        return Genotype.from_json(source)
    if isinstance(source, str):
        stripped = source.strip()
        if "Genotype(" in stripped:
            return Genotype.parse(stripped)
        zoo_name = resolve_zoo_name(stripped)
        if zoo_name is not None:
            from fastnas.genotype_zoo import get_zoo_genotype

            return get_zoo_genotype(zoo_name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not os.path.exists(path):
            raise GenotypeError(
                f"no genotype named {str(source)!r} and no such file or directory; {_accepted_forms()}"
            )
        if path.is_dir():
            candidate = path / "genotype.json"
            if not candidate.is_file():
                raise GenotypeError(f"run directory {str(path)!r} has no genotype.json at its top")
            return Genotype.load_json(candidate)
        return _from_file(path)
    if all(hasattr(source, field) for field in _DARTS_FIELDS):  # e.g. a DARTS namedtuple
        return Genotype(**{field: getattr(source, field) for field in _DARTS_FIELDS})
    raise GenotypeError(
        f"cannot load a genotype from {type(source).__name__} {source!r:.200}; {_accepted_forms()}"
    )
