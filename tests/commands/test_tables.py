"""Markdown tables printed row by row line up with the header whose widths were fixed up front."""

from __future__ import annotations

from vtr.commands.tables import TableWriter


def test_rows_line_up_with_the_head_and_an_over_wide_cell_widens_only_its_row(capsys):
    writer = TableWriter(("method", "budget", "text"), (13, 0, 0))
    writer.print_head()
    writer.print_row(("holitom_inner", "0.25", "abc"))
    writer.print_row(("none", "a-long-label", "x"))
    head, rule, first, second = capsys.readouterr().out.splitlines()
    assert head == "| method        | budget | text |" and rule == "|---------------|--------|------|"
    assert first == "| holitom_inner | 0.25   | abc  |"
    assert second == "| none          | a-long-label | x    |"
