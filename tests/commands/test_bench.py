"""`vtr bench` from the command line: the table, the JSON file, progress lines, a default that reduces."""

from __future__ import annotations

import json

from vtr.cli import main


def test_bench_command_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "qwen2_5_vl", "--methods", "random", "--budgets", "0.5", "--repeats", "1",
                 "--new-tokens", "2", "--dtype", "float32", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    table = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["none", "ideal", "random"]
    data = json.loads(out.read_text())
    assert data["meta"]["model"] == "qwen2_5_vl" and len(data["rows"]) == 3
    assert set(data["rows"][2]) >= {"ttft_ms", "prefill_ms", "reduction_ms", "decode_tok_s", "peak_mem_mb",
                                    "tflops", "ttft_over_ideal", "visual_llm"}
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [line.split(" (")[0] for line in progress] == ["[1/3] none", "[2/3] ideal at budget 0.5",
                                                          "[3/3] random at budget 0.5"]


def test_default_budget_reduces_on_the_default_model(capsys):
    """`vtr bench` with the default model, methods and budget (timing options only cut for speed)."""
    assert main(["bench", "--repeats", "1", "--warmup", "0", "--new-tokens", "2"]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")][2:]
    visual = {row[0]: [int(n) for n in row[2].split("→")] for row in rows}
    assert list(visual) == ["none", "ideal", "divprune", "random", "fastv"]
    assert visual["none"] == [64, 64, 64] and visual["divprune"] == [64, 16, 16] and visual["fastv"] == [64, 64, 16]
