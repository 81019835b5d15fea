"""NAS-Bench-201 architectures and their arch strings (Dong & Yang, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search", ICLR 2020).

A cell has 4 nodes (node 0 is the input, node 3 the output) and one edge ``j <- i`` for every
``i < j``: 6 edges, each carrying one of the 5 ops of :data:`NB201_OPS`. The arch string lists,
node by node, the op on the edge from each earlier node::

    |op~0|+|op~0|op~1|+|op~0|op~1|op~2|

This module is pure Python (no torch), so tables and logs can use it cheaply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fastnas.errors import FastnasError
from fastnas.fileio import atomic_write_text

__all__ = [
    "NB201_ARCH_JSON_FORMAT",
    "NB201_EDGES",
    "NB201_NUM_NODES",
    "NB201_OPS",
    "ArchEdge",
    "NB201Arch",
    "NB201ArchError",
]

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""The 5 NAS-Bench-201 ops in their index order (the alpha-column order)."""

NB201_NUM_NODES = 4
NB201_EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for j in range(1, NB201_NUM_NODES) for i in range(j))
"""``(source, target)`` of the 6 edges in arch-string order: (0,1), (0,2), (1,2), (0,3), (1,3), (2,3)."""

NB201_ARCH_JSON_FORMAT = "fastnas.nb201_arch/1"

_EXAMPLE = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
_BOM = "\ufeff"
_MAX_ARCH_CHARS = 1000  # the longest valid arch string has about 100 characters


class NB201ArchError(FastnasError, ValueError):
    """A malformed NB201 arch string or arch JSON; the message says what is wrong and gives an example."""


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ArchEdge(NamedTuple):
    """One edge of an NB201 cell: ``op`` from node ``source`` into node ``target``."""

    source: int
    target: int
    op: str


def _check_op(name: object, where: str) -> str:
    if name not in NB201_OPS:
        raise NB201ArchError(
            f"{where}: unknown op {_short(name)}; the NAS-Bench-201 ops are: {', '.join(NB201_OPS)}"
        )
    return name


def _parse_node(group: str, target: int, text: str) -> list[str]:
    """Ops of the edges into node ``target`` from the group ``|op~0|op~1|...|``."""
    where = f"arch string {text!r}, node {target}"
    if len(group) < 2 or not group.startswith("|") or not group.endswith("|"):
        raise NB201ArchError(f"{where}: the group {group!r} must start and end with '|' (e.g. {_EXAMPLE!r})")
    entries = group[1:-1].split("|")
    if len(entries) != target:
        raise NB201ArchError(
            f"{where}: expected {target} input(s), one per earlier node, got {len(entries)} in {group!r}"
        )
    ops = []
    for source, entry in enumerate(entries):
        op, sep, index = entry.partition("~")
        if not sep or "~" in index:
            raise NB201ArchError(
                f"{where}: entry {entry!r} must have the form 'op~input' (e.g. 'none~{source}')"
            )
        if index != str(source):
            raise NB201ArchError(
                f"{where}: entry {entry!r} has input index {index!r}, expected {source} "
                "(inputs are listed in order 0, 1, ...)"
            )
        ops.append(_check_op(op, where))
    return ops


@dataclass(frozen=True)
class NB201Arch:
    """One NAS-Bench-201 cell: ``ops[e]`` is the op on edge ``NB201_EDGES[e]``.

    The edge order is (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2), the order of the arch string.
    """

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.ops, str):
            raise TypeError("NB201Arch(ops) takes 6 op names; use NB201Arch.parse(text) for arch strings")
        ops = tuple(self.ops)
        if len(ops) != len(NB201_EDGES):
            raise NB201ArchError(
                f"an NB201 cell has {len(NB201_EDGES)} edges, got {len(ops)} ops: {_short(list(ops))}"
            )
        for (source, target), op in zip(NB201_EDGES, ops, strict=True):
            _check_op(op, f"edge {target}<-{source}")
        object.__setattr__(self, "ops", ops)

    @classmethod
    def parse(cls, text: str) -> NB201Arch:
        """Parse ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (surrounding whitespace and a BOM are ignored)."""
        if not isinstance(text, str):
            raise TypeError(f"an NB201 arch string must be a str, got {type(text).__name__}")
        stripped = text.removeprefix(_BOM).strip()
        if not stripped:
            raise NB201ArchError(f"empty NB201 arch string; expected e.g. {_EXAMPLE!r}")
        if len(stripped) > _MAX_ARCH_CHARS:
            raise NB201ArchError(
                f"NB201 arch string of {len(stripped):,} characters; an arch string has at most "
                f"{_MAX_ARCH_CHARS} (e.g. {_EXAMPLE!r})"
            )
        groups = stripped.split("+")
        if len(groups) != NB201_NUM_NODES - 1:
            raise NB201ArchError(
                f"arch string {text!r}: expected {NB201_NUM_NODES - 1} node groups separated by '+' "
                f"(nodes 1, 2, 3), got {len(groups)}; e.g. {_EXAMPLE!r}"
            )
        ops: list[str] = []
        for target, group in enumerate(groups, start=1):
            ops.extend(_parse_node(group, target, text))
        return cls(tuple(ops))

    def to_literal(self) -> str:
        """The arch string, exactly as NAS-Bench-201 writes it."""
        groups = []
        for target in range(1, NB201_NUM_NODES):
            entries = [f"{op}~{source}" for source, t, op in self.edges if t == target]
            groups.append("|" + "|".join(entries) + "|")
        return "+".join(groups)

    def __str__(self) -> str:
        return self.to_literal()

    @property
    def edges(self) -> tuple[ArchEdge, ...]:
        """``(source, target, op)`` for the 6 edges, in arch-string order."""
        return tuple(ArchEdge(s, t, op) for (s, t), op in zip(NB201_EDGES, self.ops, strict=True))

    def count_op(self, name: str) -> int:
        """How many edges carry op ``name`` (e.g. ``skip_connect``, the skip-collapse diagnostic)."""
        return self.ops.count(_check_op(name, "count_op"))

    def to_json(self) -> dict[str, Any]:
        """``{"format", "arch_str", "ops"}``."""
        return {"format": NB201_ARCH_JSON_FORMAT, "arch_str": self.to_literal(), "ops": list(self.ops)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> NB201Arch:
        """Inverse of :meth:`to_json` (also accepts the JSON text); ``arch_str`` wins, ``ops`` must agree."""
        if isinstance(data, str):
            try:
                data = json.loads(data.removeprefix(_BOM), object_pairs_hook=_unique_keys)
            except NB201ArchError:  # a duplicate key
                raise
            except json.JSONDecodeError as err:
                raise NB201ArchError(f"NB201 arch JSON is not valid JSON: {err}") from None
            except (ValueError, RecursionError) as err:  # nesting too deep, an int with > 4300 digits
                reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
                raise NB201ArchError(f"NB201 arch JSON cannot be read: {reason}") from None
        if not isinstance(data, Mapping):
            raise NB201ArchError(
                f'NB201 arch JSON must be an object such as {{"arch_str": {_EXAMPLE!r}}}, '
                f"got {type(data).__name__} {_short(data)}"
            )
        unknown = [k for k in data if k not in _JSON_KEYS]
        if unknown:
            raise NB201ArchError(
                f"NB201 arch JSON has the unknown key {_short(unknown[0])}; its keys are "
                f"{', '.join(map(repr, _JSON_KEYS))} (an unknown key would be ignored)"
            )
        fmt = data.get("format", NB201_ARCH_JSON_FORMAT)
        if fmt != NB201_ARCH_JSON_FORMAT:
            raise NB201ArchError(
                f"NB201 arch JSON has format {_short(fmt)}; expected {NB201_ARCH_JSON_FORMAT!r}"
            )
        ops = _json_ops(data["ops"]) if "ops" in data else None
        if "arch_str" in data:
            text = data["arch_str"]
            if not isinstance(text, str):
                raise NB201ArchError(
                    f"NB201 arch JSON: 'arch_str' must be a string such as {_EXAMPLE!r}, "
                    f"got {type(text).__name__} {_short(text)}"
                )
            arch = cls.parse(text)
            if ops is not None and ops != arch.ops:
                raise NB201ArchError(
                    f"NB201 arch JSON: 'ops' {_short(list(ops))} disagree with 'arch_str' {arch}"
                )
            return arch
        if ops is not None:
            return cls(ops)
        raise NB201ArchError("NB201 arch JSON needs an 'arch_str' (or 'ops') entry")

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically (temporary file, then ``os.replace``)."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> NB201Arch:
        """Read a file written by :meth:`save_json` (a leading UTF-8 BOM is fine)."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise NB201ArchError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        try:
            return cls.from_json(text)
        except NB201ArchError as err:
            raise NB201ArchError(f"{path}: {err}") from None


_JSON_KEYS = ("format", "arch_str", "ops")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a key given twice in one object is an error (JSON would keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise NB201ArchError(
                f"NB201 arch JSON has the key {_short(key)} twice in one object; JSON would keep only the "
                "last value, so give each key once"
            )
        out[key] = value
    return out


def _json_ops(raw: Any) -> tuple[str, ...]:
    """The ``ops`` entry of an arch JSON: a list of one op name per edge."""
    count = len(NB201_EDGES)
    if not isinstance(raw, (list, tuple)):
        raise NB201ArchError(
            f"NB201 arch JSON: 'ops' must be a list of {count} op names (one per edge, in arch-string "
            f"order), got {type(raw).__name__} {_short(raw)}"
        )
    if len(raw) != count:
        raise NB201ArchError(
            f"NB201 arch JSON: 'ops' must list {count} op names (one per edge), got {len(raw)}: {_short(raw)}"
        )
    for (source, target), op in zip(NB201_EDGES, raw, strict=True):
        _check_op(op, f"NB201 arch JSON: 'ops', edge {target}<-{source}")
    return tuple(raw)
