"""The report's building blocks: result rows, table columns, benchmark sections and their markdown.

A benchmark is a :class:`Section`: its command-line options, a generator of result rows (plain dicts,
:data:`Row`) and the :class:`Column` s of its table; :func:`section_markdown` renders one section,
:func:`markdown_table` one table. This module imports no other ``benchmarks`` module, so every benchmark
module can build its section here and ``benchmarks/run.py`` registers them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Column", "Row", "Section", "markdown_table", "progress", "section_markdown"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header (default: the key) and a format spec (``"{:.2f}"``)."""

    key: str
    header: str = ""
    fmt: str = "{}"

    def __post_init__(self) -> None:
        if not self.header:
            object.__setattr__(self, "header", self.key)

    def cell(self, row: Row) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        return self.fmt.format(value).replace("|", "\\|")  # keep the markdown table intact


@dataclass(frozen=True)
class Section:
    """A benchmark: its options, its rows (one per measured case) and its table columns."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: Callable[[argparse.Namespace], Iterator[Row]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    footer: Callable[[list[Row]], list[str]] | None = None
    default: bool = True  # run without --only


def markdown_table(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """A GitHub-flavoured markdown table of ``rows``."""
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def section_markdown(section: Section, rows: list[Row]) -> str:
    """The section's title, its table and its footer lines (if any)."""
    text = f"## {section.title}\n\n{markdown_table(section.columns, rows)}"
    footer = section.footer(rows) if section.footer else []
    return text + ("\n\n" + "\n".join(footer) if footer else "")


def progress(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(message, file=sys.stderr, flush=True)
