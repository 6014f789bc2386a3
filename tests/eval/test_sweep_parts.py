"""The sweep's parts without lmms-eval runs: plan, store, failure detection, outputs, report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vtr.eval.outputs import sample_costs, task_scores
from vtr.eval.plan import Config, SweepError, SweepSetup, plan_configs
from vtr.eval.report import ordered, summary_markdown, write_report
from vtr.eval.runner import RunFailed, lmms_eval_command, run_lmms_eval
from vtr.eval.store import ResultStore

SETUP = SweepSetup(model="vtr_llava_hf", pretrained="ckpt", tasks=("vtr_colors",), limit=2, model_args="",
                   force_simple=False)


def row(method: str, budget, score: float, tflops: float | None, kept: float) -> dict:
    return {"method": method, "budget": budget, "scores": {"vtr_colors": {"exact_match,none": score}},
            "visual_tokens": {"before": 64, "llm_input": 64 if method == "fastv" else kept, "kept": kept},
            "tflops_per_sample": tflops, "samples": 2}


def test_plan_runs_the_reference_once_first_and_keeps_int_and_fraction_budgets_apart():
    configs = plan_configs(["divprune", "none", "fastv", "divprune", "none"], [64, 1, 1.0, 64])
    assert [(c.method, c.budget) for c in configs] == [
        ("none", None), ("divprune", 64), ("divprune", 1), ("divprune", 1.0), ("fastv", 64), ("fastv", 1),
        ("fastv", 1.0)]
    assert Config("divprune", 1).key != Config("divprune", 1.0).key
    with pytest.raises(SweepError, match="--budgets is required for divprune"):
        plan_configs(["none", "divprune"], [])


def test_store_appends_whole_lines_and_guards_the_setup(tmp_path):
    store = ResultStore(tmp_path)
    store.claim(SETUP)
    store.append({"method": "none", "budget": None})
    store.append({"method": "divprune", "budget": 4})
    assert store.done() == {("none", None), ("divprune", "4")}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    store.claim(SETUP)  # same setup: resume
    with pytest.raises(SweepError, match=r"another setup \(tasks: \['vtr_colors'\] there, \['mme'\] now\)"):
        store.claim(SweepSetup(**{**SETUP.__dict__, "tasks": ("mme",)}))
    store.path.write_text(store.path.read_text() + "{not json\n")
    with pytest.raises(SweepError, match="results.jsonl line 3 is not JSON"):
        store.rows()


def test_command_uses_accelerate_for_several_processes(tmp_path):
    setup = SweepSetup(**{**SETUP.__dict__, "model_args": "device_map=auto", "force_simple": True})
    command = lmms_eval_command(setup, Config("fastv", 0.25), tmp_path, tmp_path / "tasks.yaml", num_processes=4)
    assert command[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "-m"]
    assert command[command.index("--model_args") + 1] == "pretrained=ckpt,method=fastv,budget=0.25,device_map=auto"
    assert command[-3:] == ["--limit", "2", "--force_simple"]


def test_a_run_that_exits_0_without_results_fails_with_lmms_evals_error(tmp_path):
    message = "ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: Currently messages is used " \
              "for generation only"
    with pytest.raises(RunFailed) as failure:
        run_lmms_eval([sys.executable, "-c", f"print({message!r})"], tmp_path / "run", ("vtr_colors",),
                      on_wait=lambda elapsed: None)
    text = str(failure.value)
    assert text.startswith("Error during evaluation: Currently messages is used for generation only")
    assert "add --force-simple" in text and "exit code 0, no results file" in text


def test_a_run_missing_a_task_fails(tmp_path):
    results = tmp_path / "run" / "model" / "x_results.json"
    writes_one_task = (f"import pathlib; path = pathlib.Path({str(results)!r}); path.parent.mkdir(); "
                       "path.write_text('{\"results\": {\"vtr_colors\": {}}}')")
    with pytest.raises(RunFailed, match="has no results for vtr_video_colors"):
        run_lmms_eval([sys.executable, "-c", writes_one_task], tmp_path / "run", ("vtr_colors", "vtr_video_colors"),
                      on_wait=lambda elapsed: None)


def test_scores_and_costs_per_sample(tmp_path):
    assert task_scores({"results": {"mme": {"alias": "mme", "score,none": 1400, "score_stderr,none": 3.0}}}) == {
        "mme": {"score,none": 1400.0}}

    def record(kept: int, flops: float | None) -> dict:
        return {"vtr": {"visual_before": 64, "visual_after": kept, "visual_kept": kept, "flops": flops}}

    samples = tmp_path / "x_samples_mc.jsonl"
    lines = [{"token_counts": [record(4, 1e12), record(4, 2e12)]},  # one request per choice: FLOPs add up
             {"token_counts": [record(8, 1e12)]}]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert sample_costs((samples,)) == {"samples": 2, "visual_tokens": {"before": 64, "llm_input": 6, "kept": 6},
                                        "tflops_per_sample": 2.0}
    samples.write_text(json.dumps({"token_counts": [record(4, None)]}) + "\n")
    assert sample_costs((samples,))["tflops_per_sample"] is None


def test_summary_orders_rows_and_relates_them_to_the_unreduced_model():
    rows = [row("divprune", 4, 0.25, 1.0, 4), row("none", None, 0.5, 4.0, 64), row("fastv", 4, 0.0, 2.0, 4),
            row("divprune", 8, 0.5, 1.5, 8)]
    text = summary_markdown(SETUP, ordered(rows), [("vtr_colors", "exact_match,none")])
    assert [line for line in text.splitlines() if line.startswith("| ")][1:] == [
        "| none | – | 0.5 | 64 | 4 |",
        "| divprune | 8 | 0.5 (100.0%) | 8 | 1.5 (37.5%) |",
        "| divprune | 4 | 0.25 (50.0%) | 4 | 1 (25.0%) |",
        "| fastv | 4 | 0 (0.0%) | 64 → 4 | 2 (50.0%) |",
    ]


def test_report_writes_both_plots_without_flops_too(tmp_path):
    written = write_report(tmp_path, SETUP, [row("none", None, 0.5, None, 64), row("divprune", 4, 0.25, None, 4)])
    assert [path.name for path in written] == ["summary.md", "score_vs_budget.png", "score_vs_tflops.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written[1:])


def test_a_method_list_is_a_whole_sweep_of_the_shipped_model_on_the_synthetic_task(tmp_path, monkeypatch):
    import argparse

    from vtr.assets import TINY_LLAVA_SYNTH
    from vtr.eval.sweep import _out_dir, _setup, add_sweep_arguments

    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args = parser.parse_args(["--methods", "none,random"])
    setup = _setup(args)
    assert (setup.model, setup.pretrained, setup.tasks) == ("vtr_llava_hf", str(TINY_LLAVA_SYNTH), ("vtr_synthetic",))
    assert setup.model_args == "device=cpu,device_map=cpu,dtype=float32"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # no --out: a per-user directory, not the cwd
    assert args.budgets == [0.5, 0.25, 0.11] and _out_dir(args) == tmp_path / "vtr" / "runs" / "sweep-tiny-llava-synth"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert _out_dir(args) == Path.home() / ".local" / "share" / "vtr" / "runs" / "sweep-tiny-llava-synth"
    user = _setup(parser.parse_args(["--methods", "none", "--model-args", "dtype=bfloat16,layer=2"]))
    assert user.model_args == "device=cpu,device_map=cpu,dtype=bfloat16,layer=2"  # the user's keys win
    with pytest.raises(SweepError, match="--model vtr_qwen2_vl needs --pretrained"):
        _setup(parser.parse_args(["--methods", "none", "--model", "vtr_qwen2_vl"]))
    with pytest.raises(SweepError, match="--out is required with --pretrained"):
        _out_dir(parser.parse_args(["--methods", "none", "--pretrained", "ckpt"]))
