"""The overhead instrument counts what vtr adds to a call, and only that."""

from __future__ import annotations

import torch

import vtr
from vtr import testing
from vtr.measure.overhead import OpCounter, count_ops, format_overhead, measure_overhead


def _llava():
    model, processor = testing.build("llava")
    inputs = processor(images=[testing.random_image()], text=[testing.prompt(processor)], return_tensors="pt")
    return model, inputs


def test_op_counter_counts_each_dispatched_op():
    x = torch.randn(4, 4)
    with OpCounter() as counter:
        (x @ x).relu().sum()
    assert counter.total == 3 and counter.ops["aten.mm.default"] == 1


def test_the_unwrapped_model_counts_the_same_ops_every_call():
    model, inputs = _llava()
    count_ops(model, inputs)  # first call: lazy initialisation
    assert count_ops(model, inputs) == count_ops(model, inputs)


def test_rows_report_ops_beyond_the_model_and_leave_it_unwrapped():
    model, inputs = _llava()
    rows = measure_overhead(model, inputs, ["none", "divprune", "fastv"], 8, repeats=1)
    by_method = {row.method: row for row in rows}
    assert not vtr.is_wrapped(model)
    assert by_method["none"].visual_llm == by_method["none"].visual_in == 64
    assert by_method["divprune"].visual_llm == 8
    # divprune's greedy loop alone dispatches 3 ops per pick beyond the engine's bookkeeping
    assert by_method["divprune"].ops >= by_method["none"].ops + 3 * 7
    assert all(row.host_ms is not None and row.host_ms >= 0 for row in rows)
    table = format_overhead(rows)
    assert table.count("\n") == 1 + len(rows) and "| divprune | 8 | 64→8 |" in table
