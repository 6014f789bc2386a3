"""The grid of pictures as a matplotlib figure: one row per method, one column per budget.

matplotlib is optional (the ``show`` and ``eval`` extras): it is imported here only, and a missing one is a
clear error naming the install command. The figure is a plain ``matplotlib.figure.Figure`` (no pyplot,
no global state): a notebook displays it, ``fig.savefig(path)`` writes it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

CELL_INCHES = 2.0  # the longer side of a cell's picture
TITLE_INCHES = 0.55  # room for a cell's two-line title
HEADING_INCHES = 0.3
DPI = 100
MAX_ANSWER = 36
TITLE_WIDTH = 44  # characters of a title's first line before it wraps  # characters of the generated answer shown in a title


@dataclass(frozen=True)
class Cell:
    """One cell: its title and either a painted picture (H, W, 3) in [0, 1] or a note saying why there is
    none (a method refusing the configuration, a family without a pixel map)."""

    title: str
    image: np.ndarray | None = None
    note: str = ""


def matplotlib_figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("vtr show draws with matplotlib, which is not installed: pip install matplotlib (or "
                          "pip install 'visual-token-reduction[show]')") from None
    return Figure


def title(label: str, before: int, after: int, last_layer: int | None, answer: str | None) -> str:
    """'budget 0.25: 576 → 144 tokens (64 at last layer)' (wrapped) over the answer, cut to a title's width."""
    text = f"{label}{': ' if label else ''}{before} → {after} tokens"
    text = textwrap.fill(text + (f" ({last_layer} at last layer)" if last_layer is not None else ""), TITLE_WIDTH)
    if answer is not None:
        answer = " ".join(answer.split())
        answer = answer if len(answer) <= MAX_ANSWER else answer[:MAX_ANSWER - 1] + "…"
        text += f"\n“{answer}”"
    return text


def grid_figure(rows: list[tuple[str, list[Cell | None]]], heading: str = "") -> Any:
    """``rows``: (row label, one cell or ``None`` (left empty) per column), every row as long."""
    Figure = matplotlib_figure_class()
    images = [cell.image for _, cells in rows for cell in cells if cell is not None and cell.image is not None]
    aspect = max((image.shape[1] / image.shape[0] for image in images), default=1.0)
    cell_w, cell_h = (CELL_INCHES, CELL_INCHES / aspect) if aspect >= 1 else (CELL_INCHES * aspect, CELL_INCHES)
    columns = max(len(cells) for _, cells in rows)
    top = TITLE_INCHES + (HEADING_INCHES if heading else 0)  # above the first row: its titles and the heading
    width, height = columns * cell_w + 0.4, len(rows) * (cell_h + TITLE_INCHES) - TITLE_INCHES + top + 0.05
    figure = Figure(figsize=(width, height), dpi=DPI)
    grid = figure.add_gridspec(len(rows), columns, left=0.35 / width, right=1 - 0.05 / width, bottom=0.05 / height,
                               top=1 - top / height, hspace=TITLE_INCHES / cell_h, wspace=0.1 / cell_w)
    if heading:
        figure.suptitle(heading, fontsize=8, y=1 - 0.05 / height, va="top")
    for r, (label, cells) in enumerate(rows):
        for c, cell in enumerate(cells):
            axis = figure.add_subplot(grid[r, c])
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=9)
            if cell is None:
                axis.set_frame_on(False)
                continue
            axis.set_title(cell.title, fontsize=6.5)
            if cell.image is not None:
                axis.imshow(cell.image, interpolation="nearest")
            else:
                axis.text(0.5, 0.5, textwrap.fill(cell.note, 40), ha="center", va="center", fontsize=5.5,
                          transform=axis.transAxes)
    return figure
