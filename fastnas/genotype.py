"""Genotypes: the discrete architecture a search derives.

A :class:`Genotype` holds one or more normal-cell types (one per stage: Paganucci, "Efficient ConvNet
Architectures: Differentiable Neural Architecture Search", semester thesis, ETH Zurich, 2020, section
3.3.2) and one reduction cell. Each cell is a :class:`CellGenotype`: for every intermediate node the
``(op_name, input_index)`` pairs feeding it (any number >= 1 of them, as EnTranNAS-DST derives: Yang,
You, Li, Wang, Qian & Lin, "Towards Improving the Consistency, Efficiency, and Flexibility of
Differentiable Neural Architecture Search", CVPR 2021, Eq. 10) and the indices of the states
concatenated into the cell output.

Input indices follow DARTS (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019,
and its public code): 0 = output of cell k-2, 1 = output of cell k-1, j >= 2 =
intermediate node j-2; intermediate node n (0-based) may only read indices < n + 2.

The class is a drop-in for the DARTS ``Genotype`` namedtuple: ``Genotype(normal=[...],
normal_concat=range(2, 6), reduce=[...], reduce_concat=[2, 3, 4, 5])`` works, ``.normal`` and
friends return the flat DARTS lists, and ``str(genotype)`` prints the DARTS literal, which
:meth:`Genotype.parse` reads back (safely, with :mod:`ast`; nothing is evaluated).

A genotype builds exactly what it says, so a :class:`Genotype` refuses cells whose wiring would build
something else than the reader sees (:class:`GenotypeError`, one line naming the cell, the nodes and the
fix). Edges through the zero op ``none`` carry nothing, so they count as no edge:

- a cell whose ops are all ``none`` (it outputs zeros whatever its inputs) is always refused;
- a *dangling* intermediate node, one whose output reaches the cell output neither through the concat
  nor through a later node that does (e.g. ``normal_concat=[5]`` or ``[2]`` when no other node reads
  the rest, or ``[0, 1]``, which concatenates only the two cell inputs), is refused: its ops would be
  built, counted and trained, and their output thrown away;
- so is a node *cut off from the cell inputs* (all its pairs are ``none``, or it reads only such nodes):
  it outputs a constant.

The DARTS concat is every intermediate node, ``range(2, 2 + nodes)``, and passes trivially. A custom
concat is accepted when every intermediate node still reaches it through other nodes (e.g. ``[5]`` for
a chain of states 2 -> 3 -> 4 -> 5, or ``[3, 4]`` when state 3 or 4 reads state 2); it may then also
list a cell input (0 or 1) of a normal cell, which passes that input into the cell output unchanged, as
written (the evaluation network refuses it in a reduction cell, whose inputs have the wrong spatial
size). The last
two rules are waived when asked for explicitly: ``allow_dangling=True`` on :class:`Genotype`,
:meth:`Genotype.parse`, :meth:`Genotype.from_json`, :meth:`Genotype.load_json` and
:func:`load_genotype`, or inside the genotype itself, as the literal keyword ``allow_dangling=True`` or the
JSON key ``"allow_dangling": true`` (how ``fastnas train --genotype`` takes it). A genotype that keeps such
nodes remembers it (:attr:`Genotype.allow_dangling`) and writes the opt-in into its literal and JSON, so
it reads back (a resumed run, a checkpoint) without being asked again. A cell whose output does not
depend on its inputs at all is refused even then.

Genotype JSON is read strictly: a key that is not in the schema (a misspelling such as ``"Concat"``,
which would otherwise fall back to the default concat) and a key given twice in one object (JSON would
keep the last) are errors. In a literal the same holds for keywords (an unknown keyword, or one given
twice).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import re
import reprlib
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

from fastnas.errors import FastnasError, MissingPathError
from fastnas.fileio import atomic_write_text, file_kind
from fastnas.genotype_zoo import ZOO_ALIASES, ZOO_LITERALS, ZOO_NAMES, resolve_zoo_name
from fastnas.ops import available_ops, get_op_spec, is_registered

__all__ = [
    "GENOTYPE_JSON_FORMAT",
    "MAX_GENOTYPE_FILE_BYTES",
    "MAX_INPUTS_PER_NODE",
    "MAX_LITERAL_CHARS",
    "MAX_LITERAL_DEPTH",
    "MAX_NODES_PER_CELL",
    "CellGenotype",
    "Genotype",
    "GenotypeError",
    "get_zoo_genotype",
    "load_genotype",
]

GENOTYPE_JSON_FORMAT = "fastnas.genotype/1"
"""Value of the ``"format"`` key written by :meth:`Genotype.to_json` (bumped on schema changes)."""

Pair = tuple[str, int]
Node = tuple[Pair, ...]
CellKind = Literal["normal", "reduce"]

MAX_NODES_PER_CELL = 64
"""Most intermediate nodes a cell may have (published cells have 4)."""
MAX_INPUTS_PER_NODE = 64
"""Most ``(op, input)`` pairs one intermediate node may have (DARTS nodes have 2)."""
MAX_LITERAL_CHARS = 100_000
"""Longest genotype literal :meth:`Genotype.parse` reads (a published literal has about 600 characters)."""
MAX_LITERAL_DEPTH = 6
"""Deepest nesting of a literal's field values (a nested node list is 4 levels: list, node, pair, value)."""
MAX_GENOTYPE_FILE_BYTES = 1_000_000
"""Largest genotype file (JSON or literal text) :func:`load_genotype` and :meth:`Genotype.load_json` read."""

_EXTRA_NORMAL = re.compile(r"^normal_(\d+)(_concat)?$")
_DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_OPT_IN = "allow_dangling"
_JSON_KEYS = ("format", "normal_cells", "reduce_cell", _OPT_IN)
_JSON_CELL_KEYS = ("nodes", "concat")
_OPT_IN_HINT = (
    'opt in with allow_dangling=True (a keyword of the literal, "allow_dangling": true in the JSON, or the '
    "parameter of Genotype.parse / load_genotype)"
)
_BOM = "\ufeff"


class GenotypeError(FastnasError, ValueError):
    """A genotype is malformed; the message says what is wrong and where (cell, node, position)."""


# --------------------------------------------------------------------------------------------- cells

_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8


def _short(value: Any) -> str:
    """A bounded ``repr`` for messages: huge or deeply nested user input stays one short line."""
    return _REPR.repr(value)


def _known_ops() -> str:
    return ", ".join(available_ops())


def _did_you_mean(key: str, accepted: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the accepted name closest to ``key`` (case-insensitive), or ``""``."""
    names = list(accepted)
    by_lower = {name.lower(): name for name in names}
    if key.lower() in by_lower:
        return f" (did you mean {by_lower[key.lower()]!r}?)"
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _is_zero(op: str) -> bool:
    """True for an op that outputs zeros (``none``): an edge through it connects nothing."""
    return get_op_spec(op).kind == "zero"


def _range_len(value: range) -> int:
    """``len(value)``, also for a range too long for ``len`` (which must fit a C ``ssize_t``)."""
    try:
        return len(value)
    except OverflowError:
        start, stop, step = value.start, value.stop, value.step
        if step < 0:
            start, stop, step = -start, -stop, -step
        return max(0, (stop - start + step - 1) // step)


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
            f"{loc}: expected an (op_name, input_index) pair, got {_short(raw)}; "
            "write e.g. ('sep_conv_3x3', 0)"
        )
    op, idx = raw
    if not isinstance(op, str):
        raise GenotypeError(f"{loc}: op name must be a string, got {_short(op)} in {_short(tuple(raw))}")
    if not is_registered(op):
        raise GenotypeError(f"{loc}: unknown op {_short(op)}; known ops are: {_known_ops()}")
    index = _as_index(idx)
    if index is None:
        raise GenotypeError(f"{loc}: input index must be an int, got {_short(idx)} in {_short(tuple(raw))}")
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
        raise GenotypeError(f"{where}: expected a list of nodes, got {type(raw).__name__} {_short(raw)}")
    if len(raw) == 0:
        raise GenotypeError(f"{where}: the cell has no nodes; give at least one intermediate node")
    if len(raw) > MAX_NODES_PER_CELL:
        raise GenotypeError(
            f"{where}: {len(raw)} intermediate nodes; a cell may have at most {MAX_NODES_PER_CELL}"
        )
    nodes = []
    for n, node in enumerate(raw):
        if not _is_sequence(node):
            raise GenotypeError(
                f"{where}, node {n}: expected a list of (op, input) pairs, got {_short(node)}"
            )
        if len(node) == 0:
            raise GenotypeError(f"{where}, node {n}: empty node; every node needs at least one input pair")
        if len(node) > MAX_INPUTS_PER_NODE:
            raise GenotypeError(
                f"{where}, node {n}: {len(node)} (op, input) pairs; a node may have at most "
                f"{MAX_INPUTS_PER_NODE}"
            )
        nodes.append(tuple(_check_pair(p, n, i, where) for i, p in enumerate(node)))
    return tuple(nodes)


def _check_concat(raw: Any, num_nodes: int, where: str) -> tuple[int, ...]:
    """Validate concat indices against a cell with ``num_nodes`` intermediate nodes."""
    name = f"{where} concat"
    if raw is None:
        return tuple(range(2, num_nodes + 2))
    if not _is_sequence(raw):
        raise GenotypeError(f"{name}: expected a list of state indices or a range, got {_short(raw)}")
    size = _range_len(raw) if isinstance(raw, range) else len(raw)
    if size == 0:
        raise GenotypeError(f"{name}: empty; list the states forming the cell output, e.g. [2, 3, 4, 5]")
    if size > num_nodes + 2:
        raise GenotypeError(
            f"{name}: {size:,} entries, but a cell with {num_nodes} intermediate nodes has only "
            f"{num_nodes + 2} states (0..{num_nodes + 1}) to concatenate"
        )
    out: list[int] = []
    for pos, value in enumerate(raw):
        index = _as_index(value)
        if index is None:
            raise GenotypeError(f"{name}, position {pos}: expected an int, got {_short(value)}")
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
            f"got {type(raw).__name__} {_short(raw)}"
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

    def dangling_nodes(self) -> tuple[int, ...]:
        """Intermediate nodes (0-based) on no path from the cell inputs to the cell output.

        Edges through ``none`` count as no edge. A :class:`Genotype` refuses a cell with such nodes
        unless ``allow_dangling=True`` (see the module docstring); the DARTS concat of every node, with
        no ``none`` op, has none.
        """
        fed, used = _reach(self)
        return tuple(k for k in range(self.num_nodes) if k + 2 not in fed or k + 2 not in used)

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


# ------------------------------------------------------------------------------------------ wiring


def _reach(cell: CellGenotype) -> tuple[set[int], set[int]]:
    """``(fed, used)``: the states with a path from a cell input (0, 1), and those with a path to the
    concat, both through ops other than ``none``."""
    fed = {0, 1}
    for k, node in enumerate(cell.nodes):
        if any(j in fed and not _is_zero(op) for op, j in node):
            fed.add(k + 2)
    used = set(cell.concat)
    for k in reversed(range(cell.num_nodes)):
        if k + 2 in used:
            used.update(j for op, j in cell.nodes[k] if not _is_zero(op))
    return fed, used


def _nodes_text(nodes: Sequence[int]) -> str:
    """``node 1 (state 3)`` or ``nodes 1, 2 (states 3, 4)``."""
    if len(nodes) == 1:
        return f"node {nodes[0]} (state {nodes[0] + 2})"
    return f"nodes {', '.join(map(str, nodes))} (states {', '.join(str(k + 2) for k in nodes)})"


def _check_wiring(cell: CellGenotype, where: str, key: str, allow_dangling: bool) -> bool:
    """Refuse a cell that builds something else than written (module docstring); ``key`` is the cell's
    keyword (``normal``, ``normal_2``, ``reduce``). Returns whether the cell keeps dangling nodes (only
    possible with ``allow_dangling``)."""
    if all(_is_zero(op) for op, _ in cell.pairs):
        raise GenotypeError(
            f"{where}: every op is 'none', so the cell outputs zeros whatever its inputs; give at least "
            "one (op, input) pair a real op, e.g. ('skip_connect', 0)"
        )
    fed, used = _reach(cell)
    concat = list(cell.concat)
    unused = [k for k in range(cell.num_nodes) if k + 2 not in used]
    cut_off = [k for k in range(cell.num_nodes) if k + 2 in used and k + 2 not in fed]
    if allow_dangling:
        # without the opt-in a dangling or cut-off node is reported first; with none, some concatenated
        # state is fed
        if not any(i in fed for i in concat):
            raise GenotypeError(
                f"{where}: no path through ops other than 'none' leads from the cell inputs to the concat "
                f"{concat}, so the cell output does not depend on its inputs; connect a concatenated node "
                "to an input"
            )
        return bool(unused or cut_off)
    default = f"{key}_concat={list(range(2, cell.num_nodes + 2))}"
    if unused:
        one = len(unused) == 1
        it, verb = ("it", "is") if one else ("them", "are")
        read_by_none = {
            j for n, node in enumerate(cell.nodes) if n + 2 in used for op, j in node if _is_zero(op)
        }
        via_none = any(k + 2 in read_by_none for k in unused)
        notes = " (a 'none' op reading it adds only zeros)" if via_none else ""
        if any(i < 2 for i in concat):
            notes += " (0 and 1 in a concat are the cell inputs, not intermediate nodes)"
        raise GenotypeError(
            f"{where}: intermediate {_nodes_text(unused)} {verb} dangling: not in the concat {concat} "
            f"and read by no node on the way to it{notes}, so {'its' if one else 'their'} ops would be built "
            f"and trained but never reach the cell output; concatenate {it} (the DARTS concat is every "
            f"node: {default}), feed {it} to a concatenated node, or {_OPT_IN_HINT} to build {it} anyway"
        )
    if cut_off:
        # with no unused node, the first cut-off node has only zero ops (any other op would read a fed
        # state); the later ones read only from cut-off nodes or through zero ops
        first = cut_off[0]
        rest = " (the others read only from cut-off nodes or through 'none')" if len(cut_off) > 1 else ""
        raise GenotypeError(
            f"{where}: intermediate {_nodes_text(cut_off)} {'is' if len(cut_off) == 1 else 'are'} cut off "
            f"from the cell inputs: node {first} has only 'none' pairs, so it outputs zeros{rest}; give "
            f"node {first} a real op on an input, e.g. ('skip_connect', 0), or {_OPT_IN_HINT} to build "
            f"{'it' if len(cut_off) == 1 else 'them'} anyway"
        )
    return False


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

    Every cell's wiring is checked (module docstring): a cell of only ``none`` ops is refused, and so are
    dangling nodes and nodes cut off from the cell inputs unless ``allow_dangling=True``.
    :attr:`allow_dangling` is True only for a genotype that was allowed to keep such nodes and does; it
    is not part of the structure (equality, hash) but is written to the literal and the JSON.
    """

    normal_cells: tuple[CellGenotype, ...]
    reduce_cell: CellGenotype
    allow_dangling: bool = dataclasses.field(default=False, compare=False)

    def __init__(
        self,
        normal: Any = None,
        normal_concat: Any = None,
        reduce: Any = None,
        reduce_concat: Any = None,
        *,
        allow_dangling: bool = False,
        **extra_normals: Any,
    ) -> None:
        if not isinstance(allow_dangling, bool):
            raise GenotypeError(
                f"Genotype: allow_dangling must be True or False, got {_short(allow_dangling)}"
            )
        if normal is None:
            raise GenotypeError("Genotype needs normal=[...]: the (op, input) pairs of the normal cell")
        if reduce is None:
            raise GenotypeError("Genotype needs reduce=[...]: the (op, input) pairs of the reduction cell")
        stages: dict[int, dict[str, Any]] = {}
        for key, value in extra_normals.items():
            match = _EXTRA_NORMAL.match(key)
            if match is None or int(match.group(1)) < 2:
                hint = _did_you_mean(key, (*_DARTS_FIELDS, "normal_2", "normal_2_concat", _OPT_IN))
                raise GenotypeError(
                    f"Genotype got an unexpected keyword {key!r}{hint}; accepted: normal, normal_concat, "
                    "reduce, reduce_concat, normal_2, normal_2_concat, normal_3, ... for extra normal-cell "
                    "types, and allow_dangling"
                )
            number, part = int(match.group(1)), "concat" if match.group(2) else "pairs"
            canonical = f"normal_{number}{match.group(2) or ''}"
            if key != canonical:  # normal_02 would silently repeat normal_2
                raise GenotypeError(
                    f"Genotype keyword {key!r}: write the normal-cell number without leading zeros "
                    f"({canonical!r})"
                )
            if part in stages.setdefault(number, {}):
                raise GenotypeError(f"Genotype: field {canonical!r} given twice")
            stages[number][part] = value
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
        named = [*((_normal_key(s), c) for s, c in enumerate(normals)), ("reduce", reduce_cell)]
        kept = [_check_wiring(c, f"{key} cell", key, allow_dangling) for key, c in named]
        object.__setattr__(self, "normal_cells", tuple(normals))
        object.__setattr__(self, "reduce_cell", reduce_cell)
        object.__setattr__(self, "allow_dangling", any(kept))

    @classmethod
    def from_cells(
        cls,
        normals: CellGenotype | Sequence[CellGenotype],
        reduce: CellGenotype,
        *,
        allow_dangling: bool = False,
    ) -> Genotype:
        """Build from structured cells: one normal cell or a sequence of them, and the reduction cell.

        The wiring is checked as by the constructor (``allow_dangling`` as there).
        """
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
        return cls(
            **kwargs,
            reduce=[list(node) for node in reduce.nodes],
            reduce_concat=reduce.concat,
            allow_dangling=allow_dangling,
        )

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
        if (
            match is not None
            and int(match.group(1)) >= 2
            and not match.group(1).startswith("0")
            and "normal_cells" in self.__dict__
        ):
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
        normal-cell types follow as ``normal_2=..., normal_2_concat=...``, and ``allow_dangling=True``
        last when the genotype keeps dangling nodes (:attr:`allow_dangling`; not a DARTS field).
        """
        parts = []
        for name, c in (self.cells[0], self.cells[-1], *self.cells[1:-1]):
            parts.append(f"{name}={c.literal_nodes()}")
            parts.append(f"{name}_concat={list(c.concat)}")
        if self.allow_dangling:
            parts.append(f"{_OPT_IN}=True")
        return "Genotype(" + ", ".join(parts) + ")"

    def __str__(self) -> str:
        return self.to_literal()

    def __repr__(self) -> str:
        return self.to_literal()

    @classmethod
    def parse(cls, text: str, *, allow_dangling: bool = False) -> Genotype:
        """Parse a DARTS literal (``[NAME = ]Genotype(normal=..., ...)``) without evaluating anything.

        ``allow_dangling=True`` (or the keyword ``allow_dangling=True`` in the literal) keeps dangling
        nodes (module docstring).
        """
        return _parse_literal(text, allow_dangling)[1]

    # JSON ------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"format", "normal_cells": [{"nodes", "concat"}, ...], "reduce_cell"}``.

        ``nodes`` is one list per intermediate node of ``[op_name, input_index]`` pairs; a genotype that
        keeps dangling nodes (:attr:`allow_dangling`) adds ``"allow_dangling": true``.
        """
        data: dict[str, Any] = {
            "format": GENOTYPE_JSON_FORMAT,
            "normal_cells": [c.to_json() for c in self.normal_cells],
            "reduce_cell": self.reduce_cell.to_json(),
        }
        if self.allow_dangling:
            data[_OPT_IN] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str, *, allow_dangling: bool = False) -> Genotype:
        """Inverse of :meth:`to_json` (also accepts the JSON text).

        Read strictly: an unknown key (in the genotype or a cell object) and, in JSON text, a key given
        twice in one object are errors. ``allow_dangling=True`` (or ``"allow_dangling": true`` in the
        data) keeps dangling nodes (module docstring).
        """
        if isinstance(data, str):
            data = _json_loads(data)
        if not isinstance(data, Mapping):
            raise GenotypeError(f"genotype JSON must be an object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != GENOTYPE_JSON_FORMAT:
            raise GenotypeError(
                f"genotype JSON has format {fmt!r}; expected {GENOTYPE_JSON_FORMAT!r} (as written by to_json)"
            )
        _check_json_keys(data, _JSON_KEYS, "the genotype object")
        missing = [k for k in ("normal_cells", "reduce_cell") if k not in data]
        if missing:
            raise GenotypeError(f"genotype JSON is missing key(s) {missing}")
        opt_in = data.get(_OPT_IN, False)
        if not isinstance(opt_in, bool):
            raise GenotypeError(f"genotype JSON {_OPT_IN!r} must be true or false, got {_short(opt_in)}")
        normals = data["normal_cells"]
        if not isinstance(normals, list) or not normals:
            raise GenotypeError("genotype JSON 'normal_cells' must be a non-empty list of cells")
        kwargs: dict[str, Any] = {}
        for stage, c in enumerate(normals):
            key = _normal_key(stage)
            kwargs[key], kwargs[f"{key}_concat"] = _json_cell(c, key)
        kwargs["reduce"], kwargs["reduce_concat"] = _json_cell(data["reduce_cell"], "reduce")
        return cls(**kwargs, allow_dangling=allow_dangling or opt_in)

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike[str], *, allow_dangling: bool = False) -> Genotype:
        """Read a file written by :meth:`save_json` (a regular file of at most 1 MB; a UTF-8 BOM is fine).

        Read as strictly as :meth:`from_json`; ``allow_dangling`` as there.
        """
        text = _read_genotype_file(Path(path))
        try:
            return cls.from_json(text, allow_dangling=allow_dangling)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None


def _json_loads(text: str) -> Any:
    """``json.loads`` with every failure (syntax, nesting, huge numbers) as :class:`GenotypeError`."""
    try:
        return json.loads(text.removeprefix(_BOM), object_pairs_hook=_unique_keys)
    except GenotypeError:  # a duplicate key (a GenotypeError is a ValueError too)
        raise
    except json.JSONDecodeError as err:
        raise GenotypeError(f"genotype JSON is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:  # e.g. an int with > 4300 digits, nesting too deep
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise GenotypeError(f"genotype JSON cannot be read: {reason}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`_json_loads`: a key given twice in one object is an error (plain
    ``json.loads`` would keep the last value silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            keys = [k for k, _ in pairs]
            raise GenotypeError(
                f"genotype JSON has the key {_short(key)} twice in one object (keys {_short(keys)}); JSON "
                "would keep only the last value, so give each key once"
            )
        out[key] = value
    return out


def _check_json_keys(data: Mapping[Any, Any], accepted: Sequence[str], where: str) -> None:
    """Refuse a key of ``data`` not in ``accepted`` (naming the closest accepted key)."""
    for key in data:
        if key not in accepted:
            hint = _did_you_mean(key, accepted) if isinstance(key, str) else ""
            raise GenotypeError(
                f"genotype JSON: {where} has the unknown key {_short(key)}{hint}; its keys are "
                f"{', '.join(map(repr, accepted))} (an unknown key would be ignored)"
            )


def _json_cell(data: Any, key: str) -> tuple[Any, Any]:
    if not isinstance(data, Mapping):
        raise GenotypeError(f"genotype JSON: the {key} cell must be an object with 'nodes' and 'concat'")
    _check_json_keys(data, _JSON_CELL_KEYS, f"the {key} cell")
    if "nodes" not in data:
        raise GenotypeError(f"genotype JSON: the {key} cell must be an object with 'nodes' and 'concat'")
    nodes = data["nodes"]
    if not isinstance(nodes, list) or any(not isinstance(node, list) for node in nodes):
        raise GenotypeError(f"genotype JSON: {key} 'nodes' must be a list with one list of pairs per node")
    if "concat" in data and data["concat"] is None:
        raise GenotypeError(
            f"genotype JSON: {key} 'concat' is null; give the list of concatenated states, or leave the key "
            "out for every intermediate node"
        )
    return nodes, data.get("concat")


# --------------------------------------------------------------------------------------------- parse

_EXPECTED = "expected Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])"


def _snippet(node: ast.AST) -> str:
    """The source of ``node`` for a message, at most 80 characters."""
    try:
        text = ast.unparse(node)
    except (RecursionError, MemoryError, ValueError):
        return f"<{type(node).__name__} expression>"
    return text if len(text) <= 80 else text[:77] + "..."


def _literal_value(node: ast.expr, field: str, depth: int = 1) -> Any:
    """Convert a literal AST node (lists, tuples, str/int constants, ``range(...)``) to Python.

    ``depth`` is the nesting level of ``node`` inside the field value (1 = the value itself); deeper
    than :data:`MAX_LITERAL_DEPTH` is an error, so no input can exhaust the stack.
    """
    where = f"genotype literal, field {field!r} (line {node.lineno}, col {node.col_offset})"
    if depth > MAX_LITERAL_DEPTH:
        raise GenotypeError(
            f"{where}: nested more than {MAX_LITERAL_DEPTH} levels deep; a field is at most a list of "
            "nodes, each a list of (op, input) pairs"
        )
    if isinstance(node, ast.Constant) and type(node.value) in (str, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal_value(elt, field, depth + 1) for elt in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal_value(node.operand, field, depth + 1)
        if isinstance(value, int):
            return -value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("range", "list")
        and not node.keywords
    ):
        args = [_literal_value(a, field, depth + 1) for a in node.args]
        if node.func.id == "range" and 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args):
            return _literal_range(args, where)
        if node.func.id == "list" and len(args) == 1 and isinstance(args[0], list):
            return args[0]
    raise GenotypeError(
        f"{where}: unsupported expression {_snippet(node)!r}; only lists/tuples of ('op', int) pairs, ints "
        "and range(a, b) are allowed"
    )


def _literal_range(args: list[int], where: str) -> list[int]:
    """``list(range(*args))``, refusing a zero step and more entries than a concat can hold."""
    try:
        values = range(*args)
    except ValueError as err:  # range(a, b, 0)
        raise GenotypeError(f"{where}: range{tuple(args)}: {err}") from None
    limit = MAX_NODES_PER_CELL + 2
    if _range_len(values) > limit:
        raise GenotypeError(
            f"{where}: range{tuple(args)} has {_range_len(values):,} entries; a concat lists at most "
            f"{limit} states"
        )
    return list(values)


def _parse_literal(text: str, allow_dangling: bool = False) -> tuple[str | None, Genotype]:
    """Parse ``[NAME = ]Genotype(...)``; returns ``(NAME or None, genotype)``.

    Only a call of the plain name ``Genotype`` is accepted (no ``module.Genotype``, no expression
    before it); each field may be given once, positionally (in DARTS order) or by keyword. The keyword
    ``allow_dangling=True`` (a plain ``True``/``False``) opts in as ``allow_dangling`` does.
    """
    if not isinstance(text, str):
        raise GenotypeError(f"Genotype.parse expects a string, got {type(text).__name__}")
    if len(text) > MAX_LITERAL_CHARS:
        raise GenotypeError(
            f"genotype literal is {len(text):,} characters long; at most {MAX_LITERAL_CHARS:,} are read "
            "(a published literal has about 600)"
        )
    source = text.removeprefix(_BOM).strip()
    if not source:
        raise GenotypeError("genotype literal is empty; expected Genotype(normal=[...], ...)")
    try:
        module = ast.parse(source, mode="exec")
    except SyntaxError as err:
        raise GenotypeError(
            f"genotype literal is not valid Python syntax ({err.msg}, line {err.lineno}); {_EXPECTED}"
        ) from None
    except (RecursionError, MemoryError):
        raise GenotypeError(f"genotype literal is nested too deeply to parse; {_EXPECTED}") from None
    except ValueError as err:  # e.g. a NUL character
        raise GenotypeError(f"genotype literal cannot be parsed ({err}); {_EXPECTED}") from None
    if len(module.body) != 1:
        raise GenotypeError(
            "genotype literal must be exactly one Genotype(...) expression, "
            f"found {len(module.body)} statements"
        )
    stmt = module.body[0]
    name: str | None = None
    if isinstance(stmt, ast.Assign):
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            targets = " = ".join(_snippet(t) for t in stmt.targets)
            raise GenotypeError(
                f"genotype literal assigns to {targets[:80]!r}; expected one plain name: NAME = Genotype(...)"
            )
        name, call = stmt.targets[0].id, stmt.value
    elif isinstance(stmt, ast.Expr):
        call = stmt.value
    else:
        raise GenotypeError(
            f"genotype literal must be 'Genotype(...)' or 'NAME = Genotype(...)', got {_snippet(stmt)!r}"
        )
    if not isinstance(call, ast.Call):
        raise GenotypeError(f"genotype literal must be a Genotype(...) call, got {_snippet(call)!r}")
    if not isinstance(call.func, ast.Name) or call.func.id != "Genotype":
        raise GenotypeError(
            f"genotype literal must be a Genotype(...) call of the plain name Genotype, got a call of "
            f"{_snippet(call.func)!r}; write Genotype(normal=[...], ...) or NAME = Genotype(...), with no "
            "module or expression before Genotype"
        )
    if len(call.args) > len(_DARTS_FIELDS):
        raise GenotypeError(
            f"Genotype(...) takes at most {len(_DARTS_FIELDS)} positional arguments "
            f"({', '.join(_DARTS_FIELDS)}), got {len(call.args)}"
        )
    kwargs: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for pos, (field, arg) in enumerate(zip(_DARTS_FIELDS, call.args, strict=False)):
        kwargs[field] = _literal_value(arg, field)
        given_as[field] = f"positional argument {pos + 1}"
    for kw in call.keywords:
        if kw.arg is None:
            raise GenotypeError("genotype literal: '**' arguments are not allowed; use keyword=value")
        if kw.arg in kwargs:
            first = given_as[kw.arg]
            raise GenotypeError(
                f"genotype literal: field {kw.arg!r} given twice (as {first} and as keyword {kw.arg}=); "
                "give each field once"
            )
        if kw.arg == _OPT_IN:
            if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool)):
                raise GenotypeError(
                    f"genotype literal: {_OPT_IN}= must be True or False, got {_snippet(kw.value)!r}"
                )
            kwargs[kw.arg] = kw.value.value
        else:
            kwargs[kw.arg] = _literal_value(kw.value, kw.arg)
        given_as[kw.arg] = f"keyword {kw.arg}="
    kwargs[_OPT_IN] = allow_dangling or kwargs.get(_OPT_IN, False)
    return name, Genotype(**kwargs)


# --------------------------------------------------------------------------------------------- zoo


@cache
def _zoo_genotype(name: str) -> Genotype:
    assigned, genotype = _parse_literal(ZOO_LITERALS[name])
    if assigned != name:  # guards the table against copy errors
        raise GenotypeError(f"zoo literal {name!r} assigns {assigned!r}")
    return genotype


def get_zoo_genotype(name: str) -> Genotype:
    """The published genotype ``name`` (e.g. ``"DARTS_V2"``, ``"darts"``, ``"PC_DARTS_image"``)."""
    canonical = resolve_zoo_name(name)
    if canonical is None:
        aliases = ", ".join(f"{a} -> {t}" for a, t in ZOO_ALIASES.items())
        raise GenotypeError(
            f"unknown zoo genotype {_short(name)}; known: {', '.join(ZOO_NAMES)} "
            f"(case-insensitive; aliases {aliases})"
        )
    return _zoo_genotype(canonical)


# ------------------------------------------------------------------------------------- load_genotype


def _accepted_forms() -> str:
    return (
        "accepted: a Genotype; a zoo name (" + ", ".join(ZOO_NAMES) + ", case-insensitive); a literal "
        "'Genotype(normal=[...], ...)'; a genotype JSON dict; a path to a JSON file written by "
        "Genotype.save_json or to a text file holding a literal; a run directory with genotype.json"
    )


def _read_genotype_file(path: Path) -> str:
    """Text of genotype file ``path``: a regular file of at most :data:`MAX_GENOTYPE_FILE_BYTES`, UTF-8.

    The file type is checked before opening (a FIFO or device would block or never end) and again on
    the open descriptor; a leading UTF-8 BOM is dropped.
    """
    shown = repr(str(path))
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MissingPathError(f"genotype file {shown} does not exist") from None
    except OSError as err:
        raise GenotypeError(f"cannot read genotype file {shown}: {err.strerror}") from None
    limit = MAX_GENOTYPE_FILE_BYTES

    def check(mode: int, size: int) -> None:
        if not stat.S_ISREG(mode):
            raise GenotypeError(
                f"genotype file {shown} is {file_kind(mode)}, not a regular file; give a JSON file, a text "
                "file holding a literal, or a run directory"
            )
        if size > limit:
            raise GenotypeError(
                f"genotype file {shown} is {size:,} bytes; a genotype file may be at most {limit:,} bytes"
            )

    check(info.st_mode, info.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(handle.fileno())
            check(opened.st_mode, opened.st_size)  # the path may have been replaced since stat()
            data = handle.read(limit + 1)
    except OSError as err:
        raise GenotypeError(f"cannot read genotype file {shown}: {err.strerror or err}") from None
    check(stat.S_IFREG, len(data))  # the file may have grown since stat()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise GenotypeError(
            f"genotype file {shown} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None


def _from_file(path: Path, allow_dangling: bool) -> Genotype:
    text = _read_genotype_file(path)
    try:
        if text.lstrip().startswith("{"):
            return Genotype.from_json(text, allow_dangling=allow_dangling)
        return Genotype.parse(text, allow_dangling=allow_dangling)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


def load_genotype(source: Any, *, allow_dangling: bool = False) -> Genotype:
    """Get a :class:`Genotype` from any common form.

    ``source`` may be a Genotype (returned as is), a zoo name (``"DARTS_V2"``, case-insensitive), a
    literal string, a JSON dict, a path to a JSON file (:meth:`Genotype.save_json`) or to a text file
    holding a literal (a regular file of at most 1 MB), a run directory containing ``genotype.json``,
    or a DARTS-style namedtuple. Every form is checked as the :class:`Genotype` constructor checks;
    ``allow_dangling=True`` keeps dangling nodes (module docstring).
    """
    if isinstance(source, Genotype):
        return source
    if isinstance(source, Mapping):
        return Genotype.from_json(source, allow_dangling=allow_dangling)
    if isinstance(source, str):
        stripped = source.removeprefix(_BOM).strip()
        if "Genotype(" in stripped:
            return Genotype.parse(stripped, allow_dangling=allow_dangling)
        zoo_name = resolve_zoo_name(stripped)
        if zoo_name is not None:
            return get_zoo_genotype(zoo_name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not os.path.exists(path):
            raise GenotypeError(
                f"no genotype named {_short(str(source))} and no such file or directory; {_accepted_forms()}"
            )
        if path.is_dir():
            candidate = path / "genotype.json"
            if not candidate.exists():
                raise GenotypeError(f"run directory {str(path)!r} has no genotype.json at its top")
            return Genotype.load_json(candidate, allow_dangling=allow_dangling)
        return _from_file(path, allow_dangling)
    if all(hasattr(source, field) for field in _DARTS_FIELDS):  # e.g. a DARTS namedtuple
        fields = {field: getattr(source, field) for field in _DARTS_FIELDS}
        return Genotype(**fields, allow_dangling=allow_dangling)
    raise GenotypeError(
        f"cannot load a genotype from {type(source).__name__} {_short(source)}; {_accepted_forms()}"
    )
