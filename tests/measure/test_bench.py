"""`vtr bench` on a tiny model: every field, ideal and reduced rows, overhead recorded."""

from __future__ import annotations

import math

import vtr
from conftest import make_inputs
from vtr.measure.bench import BenchConfig, run_bench
from vtr.measure.timing import recording, section

FAST = BenchConfig(warmup=1, repeats=2, new_tokens=32)  # decoding outlasts timing noise on a loaded machine


def test_run_bench_returns_unreduced_ideal_and_method_rows(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    rows = run_bench(model, inputs, ["divprune", "fastv"], [16], FAST)
    assert [(r.method, r.budget) for r in rows] == [("none", "-"), ("ideal", "16"), ("divprune", "16"),
                                                    ("fastv", "16")]
    none, ideal, divprune, fastv = rows
    assert (none.visual_in, none.visual_llm, none.visual_last_layer) == (64, 64, 64)
    assert (ideal.visual_llm, divprune.visual_llm, divprune.visual_last_layer) == (16, 16, 16)
    assert (fastv.visual_llm, fastv.visual_last_layer) == (64, 16)
    for row in rows:
        assert row.ttft_ms.q1 <= row.ttft_ms.median <= row.ttft_ms.q3 and row.ttft_ms.median > 0
        assert row.prefill_ms.median > 0 and row.decode_tok_s > 0 and math.isfinite(row.decode_tok_s)
    assert none.reduction_ms is None and ideal.reduction_ms is None
    assert 0 < divprune.reduction_ms.median < divprune.ttft_ms.median
    assert 0 < fastv.reduction_ms.median < fastv.ttft_ms.median
    assert divprune.ttft_over_ideal == divprune.ttft_ms.median / ideal.ttft_ms.median
    assert not vtr.is_wrapped(model)


def test_sections_record_only_while_recording():
    with section("outside"):
        pass
    with recording(lambda: None) as recorder:
        with section("inside"):
            pass
    assert set(recorder.seconds) == {"inside"} and recorder.seconds["inside"] >= 0
