"""``summary.md`` and the PNG plots of a sweep, rebuilt from ``results.jsonl`` alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from vtr.eval.plan import UNREDUCED, SweepSetup
from vtr.eval.store import write_atomic

Row = dict[str, Any]
Column = tuple[str, str]  # (task, "metric,filter")

SUMMARY_FILE = "summary.md"
# file name -> (x-axis label, x value of a row; None = no point)
PLOTS: dict[str, tuple[str, Callable[[Row], Any]]] = {
    "score_vs_budget.png": ("budget (tokens per image/video, or fraction kept)", lambda row: row["budget"]),
    "score_vs_tflops.png": ("TFLOPs per sample", lambda row: row["tflops_per_sample"]),
    "score_vs_content_tokens.png": ("content visual tokens per sample at the last LLM layer (newlines apart)",
                                    lambda row: _tokens(row, "content_tokens")),
}
_PANELS_PER_ROW = 4


def write_report(directory: Path, setup: SweepSetup, rows: list[Row]) -> list[Path]:
    """Write the summary table and both plots; returns their paths."""
    rows, columns = ordered(rows), score_columns(rows)
    summary = directory / SUMMARY_FILE
    write_atomic(summary, summary_markdown(setup, rows, columns))
    return [summary] + [write_plot(directory / name, label, x_of, rows, columns)
                        for name, (label, x_of) in PLOTS.items()]


def ordered(rows: list[Row]) -> list[Row]:
    """The unreduced reference first, then methods in the order they were first run, larger budgets first."""
    first_seen = {method: rank for rank, method in enumerate(dict.fromkeys(row["method"] for row in rows))}

    def key(row: Row) -> tuple:
        budget = row["budget"]
        return (row["method"] != UNREDUCED, first_seen[row["method"]],
                isinstance(budget, float), -(budget or 0))

    return sorted(rows, key=key)


def score_columns(rows: list[Row]) -> list[Column]:
    return list(dict.fromkeys((task, metric) for row in rows for task, metrics in row["scores"].items()
                              for metric in metrics))


def column_title(column: Column) -> str:
    task, metric = column
    return f"{task} {metric.removesuffix(',none')}"


def summary_markdown(setup: SweepSetup, rows: list[Row], columns: list[Column]) -> str:
    reference = next((row for row in rows if row["method"] == UNREDUCED), None)
    header = ["method", "budget", *map(column_title, columns), "content tokens", "newline tokens", "TFLOPs / sample"]
    lines = [
        f"# vtr sweep: {setup.model} on {setup.pretrained}",
        "",
        f"Tasks: {', '.join(setup.tasks)}; limit: {setup.limit if setup.limit is not None else 'none (full tasks)'}; "
        f"model args: {setup.model_args or '(none)'}; {len(rows)} configs.",
        "",
        "Scores and TFLOPs carry their percentage of the unreduced model (`none`) in parentheses. Content tokens: "
        "the visual tokens a budget counts, mean per sample entering the LLM, then `→` what its last layer saw "
        "when an in-LLM method pruned further. Newline tokens: the structural row ends AnyRes / OneVision "
        "models add (kept with the rows they close, never pruned inside the LLM; 0 for other families). "
        "TFLOPs: mean per sample of the analytical model (`vtr.measure.flops`): vision encoder, "
        "projector, reduction, LLM prefill and decoding; `–` where it was not available.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row["method"], "–" if row["budget"] is None else str(row["budget"])]
        cells += [_relative(_score(row, column), reference and _score(reference, column), row is reference)
                  for column in columns]
        reference_tflops = reference and reference["tflops_per_sample"]
        cells += [_visual(row), _newlines(row), _relative(row["tflops_per_sample"], reference_tflops, row is reference)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _picture_lines(rows)) + "\n"


def _picture_lines(rows: list[Row]) -> list[str]:
    """Links to each config's picture of its first sample (``vtr.eval.pictures``); none for rows written
    before sweeps drew them."""
    if not any("picture" in row for row in rows):
        return []
    lines = ["", "## What each config kept of its first sample", "",
             "Dropped patches dimmed, merged tokens in one colour, after an in-LLM method only the tokens reaching "
             "the last layer bright (`vtr show`). A config without a picture says why in its run's log.", ""]
    for row in rows:
        label = row["method"] + ("" if row["budget"] is None else f" budget={row['budget']}")
        picture = row.get("picture")
        lines.append(f"- [{label}]({picture})" if picture else f"- {label}: no picture (see its log)")
    return lines


def write_plot(path: Path, x_label: str, x_of: Callable[[Row], Any], rows: list[Row], columns: list[Column]) -> Path:
    """One panel per task metric, one line per method; the unreduced model is a dashed line (budget axis,
    where it has no budget) or a star (TFLOPs axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(1, math.ceil(len(columns) / _PANELS_PER_ROW))
    n_cols = max(1, min(len(columns), _PANELS_PER_ROW))
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(4.5 * n_cols, 3.6 * n_rows), squeeze=False)
    panels = axes.flatten()
    for axis, column in zip(panels, columns):
        _plot_panel(axis, column, rows, x_of)
        axis.set_xlabel(x_label)
    for axis in panels[len(columns):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_panel(axis, column: Column, rows: list[Row], x_of: Callable[[Row], Any]) -> None:
    methods = dict.fromkeys(row["method"] for row in rows if row["method"] != UNREDUCED)
    for method in methods:
        points = sorted((x_of(row), _score(row, column)) for row in rows if row["method"] == method
                        and x_of(row) is not None and _score(row, column) is not None)
        if points:
            axis.plot(*zip(*points), marker="o", label=method + _newline_note(rows, method))
    reference = next((row for row in rows if row["method"] == UNREDUCED and _score(row, column) is not None), None)
    if reference is not None and x_of(reference) is not None:
        axis.scatter([x_of(reference)], [_score(reference, column)], marker="*", s=150, color="black", label=UNREDUCED)
    elif reference is not None:
        axis.axhline(_score(reference, column), linestyle="--", color="grey", label=UNREDUCED)
    if axis.has_data():
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "nothing to plot (no FLOPs recorded?)", ha="center", va="center",
                  transform=axis.transAxes)
    axis.set_title(column_title(column), fontsize=10)
    axis.set_ylabel("score")


def _newline_note(rows: list[Row], method: str) -> str:
    """`` (+4.5 newlines)`` where the method's rows kept newline tokens besides the content tokens."""
    kept = [value for row in rows if row["method"] == method
            if (value := _tokens(row, "newline_tokens")) is not None]
    return f" (+{sum(kept) / len(kept):.3g} newlines)" if kept and any(kept) else ""


def _score(row: Row, column: Column) -> float | None:
    task, metric = column
    return row["scores"].get(task, {}).get(metric)


def _relative(value: float | None, reference: float | None, is_reference: bool) -> str:
    if value is None:
        return "–"
    text = f"{value:.4g}"
    if is_reference or reference is None:
        return text
    return f"{text} ({100 * value / reference:.1f}%)" if reference else f"{text} (n/a)"


def _tokens(row: Row, kind: str, stage: str = "kept") -> float | None:
    """A token mean of the row (``None`` for rows written before vtr counted newlines apart)."""
    tokens = row.get(kind)
    return None if tokens is None else tokens[stage]


def _visual(row: Row) -> str:
    entering, kept = _tokens(row, "content_tokens", "llm_input"), _tokens(row, "content_tokens")
    if entering is None:
        return "–"
    return f"{entering:.4g}" if entering == kept else f"{entering:.4g} → {kept:.4g}"


def _newlines(row: Row) -> str:
    kept = _tokens(row, "newline_tokens")
    return "–" if kept is None else f"{kept:.4g}"
