"""Markdown tables, printed whole or row by row as rows are measured."""

from __future__ import annotations

import sys
from typing import TextIO


class TableWriter:
    """Rows of a markdown table with column widths fixed up front, so each row can be printed the moment it
    is measured and still line up (a cell wider than its column widens that row only)."""

    def __init__(self, header: tuple[str, ...], widths: tuple[int, ...] | None = None) -> None:
        self.header = header
        self.widths = tuple(max(len(h), w) for h, w in zip(header, widths or (0,) * len(header)))

    def line(self, cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, self.widths)) + " |"

    def head(self) -> str:
        return "\n".join([self.line(self.header), "|" + "|".join("-" * (w + 2) for w in self.widths) + "|"])

    def print_head(self, out: TextIO | None = None) -> None:
        print(self.head(), file=out or sys.stdout, flush=True)

    def print_row(self, cells: tuple[str, ...], out: TextIO | None = None) -> None:
        print(self.line(cells), file=out or sys.stdout, flush=True)


def markdown_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    """The whole table, each column as wide as its widest cell."""
    writer = TableWriter(header, tuple(max((len(row[i]) for row in body), default=0) for i in range(len(header))))
    return "\n".join([writer.head(), *map(writer.line, body)])
