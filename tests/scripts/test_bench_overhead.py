"""The overhead script's README summary and in-place rewriting of marked blocks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_overhead.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(preset: str, budget, ops: dict[str, int]) -> dict:
    return {"preset": preset, "budget": budget, "rows": [{"method": m, "ops": n} for m, n in ops.items()]}


def test_summary_is_method_by_preset_with_gaps_for_methods_that_did_not_run(script):
    results = [_result("llava-1.5-7b", 64, {"none": 29, "tome": 977}), _result("gemma-3-4b", 64, {"none": 30}),
               _result("qwen2.5-vl-7b", 64, {"none": 34, "divprune": 272, "fastv": -12})]
    assert script.summary_table(results).splitlines() == [
        "| method | llava-1.5-7b (64) | qwen2.5-vl-7b (64) |",
        "| --- | --- | --- |",
        "| none | +29 | +34 |",
        "| tome | +977 | - |",
        "| divprune | - | +272 |",
        "| fastv | - | -12 |",  # fewer ops than the unwrapped model: a sign, not "+-12"
    ]


def test_a_marked_block_is_replaced_and_its_markers_kept(script, tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- overhead-summary:start (note) -->\nold\n<!-- overhead-summary:end -->\nrest\n")
    script.replace_block(str(doc), script.SUMMARY, "| new |")
    assert doc.read_text() == ("intro\n<!-- overhead-summary:start (note) -->\n\n| new |\n\n"
                               "<!-- overhead-summary:end -->\nrest\n")
    with pytest.raises(SystemExit, match="no <!-- overhead-table:start"):
        script.replace_block(str(doc), script.TABLES, "x")
