"""The sweep's parts without lmms-eval runs: plan, store, failure detection, outputs, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vtr.eval.outputs import sample_costs, task_scores
from vtr.eval.plan import Config, SweepError, SweepSetup, plan_configs
from vtr.eval.report import ordered, summary_markdown, write_report
from vtr.eval.runner import (
    Launch,
    RunFailed,
    failure_reason,
    lmms_eval_command,
    run_lmms_eval,
)
from vtr.eval.store import ResultStore, SweepLock

SETUP = SweepSetup(model="vtr_llava_hf", pretrained="ckpt", tasks=("vtr_colors",), limit=2, model_args="",
                   force_simple=False)


def row(method: str, budget, score: float, tflops: float | None, kept: float, newlines: float = 0) -> dict:
    content = {"before": 64, "llm_input": 64 if method == "fastv" else kept, "kept": kept}
    lines = {"before": newlines, "llm_input": newlines, "kept": newlines}
    return {"method": method, "budget": budget, "scores": {"vtr_colors": {"exact_match,none": score}},
            "visual_tokens": {stage: content[stage] + newlines for stage in content}, "content_tokens": content,
            "newline_tokens": lines, "tflops_per_sample": tflops, "samples": 2}


def launched(code: str, processes: int = 1) -> Launch:
    return Launch([sys.executable, "-c", code], {}, processes)


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


def test_command_runs_data_parallel_explicitly_on_gpus_and_on_cpus(tmp_path):
    setup = SweepSetup(**{**SETUP.__dict__, "model_args": "device_map=auto", "force_simple": True})
    gpus = lmms_eval_command(setup, Config("fastv", 0.25), tmp_path, tmp_path / "tasks.yaml", num_processes=4, gpus=4)
    assert gpus.command[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    assert gpus.command[5] == "4" and gpus.env == {} and gpus.processes == 4
    assert gpus.command[gpus.command.index("--model_args") + 1] == \
        "pretrained=ckpt,method=fastv,budget=0.25,device_map=auto"
    assert gpus.command[-3:] == ["--limit", "2", "--force_simple"]
    cpus = lmms_eval_command(setup, Config("none"), tmp_path, tmp_path / "tasks.yaml", num_processes=2, gpus=0)
    assert cpus.command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cpus.env == {"ACCELERATE_USE_CPU": "true"}
    one = lmms_eval_command(setup, Config("none"), tmp_path, tmp_path / "tasks.yaml", num_processes=1, gpus=8)
    assert one.command[:3] == [sys.executable, "-m", "lmms_eval"]
    with pytest.raises(ValueError, match="--num-processes 4 needs a GPU per process; this machine has 2"):
        lmms_eval_command(setup, Config("none"), tmp_path, tmp_path / "tasks.yaml", num_processes=4, gpus=2)


def writes_results(results: Path, log_lines: list[str]) -> str:
    """Python code that prints ``log_lines`` and writes a results JSON and a samples file for vtr_colors."""
    return (f"import pathlib; path = pathlib.Path({str(results)!r}); path.parent.mkdir(); "
            "path.write_text('{\"results\": {\"vtr_colors\": {}}}'); "
            "(path.parent / 'x_samples_vtr_colors.jsonl').write_text(''); "
            + "; ".join(f"print({line!r})" for line in log_lines))


def test_a_run_that_exits_0_without_results_fails_with_lmms_evals_error(tmp_path):
    message = "ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: Currently messages is used " \
              "for generation only"
    with pytest.raises(RunFailed) as failure:
        run_lmms_eval(launched(f"print({message!r})"), tmp_path / "run", ("vtr_colors",), on_wait=lambda elapsed: None)
    text = str(failure.value)
    assert text.startswith("Error during evaluation: Currently messages is used for generation only")
    assert "add --force-simple" in text and "exit code 0, no results file" in text


def test_a_missing_data_file_is_named_not_a_retry_error(tmp_path):
    log = tmp_path / "lmms_eval.log"
    log.write_text("FileNotFoundError: Unable to find '/data/mme.parquet'\n"
                   "ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: RetryError[<Future at 0x7f "
                   "state=finished raised FileNotFoundError>]\n")
    assert failure_reason(log).startswith("FileNotFoundError: Unable to find '/data/mme.parquet' (check the task's")


def test_a_vtr_abort_is_the_reason_even_after_launcher_noise(tmp_path):
    log = tmp_path / "lmms_eval.log"
    log.write_text("vtr.eval.models.base.EvaluationAborted: vtr: VtrLlavaHf on mme doc 3 failed: ValueError: bad\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: lmms_eval FAILED\n")
    assert failure_reason(log) == "vtr: VtrLlavaHf on mme doc 3 failed: ValueError: bad"


def test_a_run_missing_a_task_fails(tmp_path):
    results = tmp_path / "run" / "model" / "x_results.json"
    with pytest.raises(RunFailed, match="has no results for vtr_video_colors"):
        run_lmms_eval(launched(writes_results(results, [])), tmp_path / "run", ("vtr_colors", "vtr_video_colors"),
                      on_wait=lambda elapsed: None)


def test_a_data_parallel_run_counts_only_when_every_rank_ran(tmp_path):
    results = tmp_path / "run" / "model" / "x_results.json"
    rank = "INFO | vtr.eval.models.base:_load_reduced:90 - vtr model: rank {}/{} on cpu (no GPU found); dtype auto"
    with pytest.raises(RunFailed, match=r"asked for 2 process\(es\), but the log shows vtr model rank\(s\) 0/1 "):
        run_lmms_eval(launched(writes_results(results, [rank.format(0, 1), rank.format(0, 1)]), processes=2),
                      tmp_path / "run", ("vtr_colors",), on_wait=lambda elapsed: None)
    run = run_lmms_eval(launched(writes_results(results, [rank.format(1, 2), rank.format(0, 2)]), processes=2),
                        tmp_path / "run", ("vtr_colors",), on_wait=lambda elapsed: None)
    assert run.device == "cpu (no GPU found); dtype auto"


def test_an_interrupted_run_ends_its_whole_process_group(tmp_path):
    """The run's child starts a grandchild (as accelerate starts ranks); both go when the sweep is stopped."""
    pids = tmp_path / "pids"
    code = ("import subprocess, sys, time, pathlib; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"pathlib.Path({str(pids)!r}).write_text(str(child.pid)); time.sleep(600)")

    def interrupt(elapsed: float) -> None:
        if pids.exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_lmms_eval(launched(code), tmp_path / "run", ("vtr_colors",), on_wait=interrupt, heartbeat_s=0.2)
    grandchild = int(pids.read_text())
    deadline = time.monotonic() + 10
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(grandchild)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def test_a_second_live_sweep_on_the_same_directory_is_refused(tmp_path):
    with SweepLock(tmp_path):
        assert (tmp_path / "sweep.lock").read_text() == f"{os.getpid()}\n"
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / "sweep.lock").write_text(f"{sleeper.pid}\n")  # as if another sweep held it
            with pytest.raises(SweepError, match=f"another vtr sweep \\(pid {sleeper.pid}\\) is running on"):
                with SweepLock(tmp_path):
                    pass
        finally:
            sleeper.kill()
            sleeper.wait()
        with SweepLock(tmp_path):  # its owner is gone: taken over
            assert (tmp_path / "sweep.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "sweep.lock").exists()


def test_scores_and_costs_per_sample(tmp_path):
    assert task_scores({"results": {"mme": {"alias": "mme", "score,none": 1400, "score_stderr,none": 3.0}}}) == {
        "mme": {"score,none": 1400.0}}

    def record(kept: int, flops: float | None, newlines: int = 0) -> dict:
        return {"vtr": {"visual_before": 64 + newlines, "visual_after": kept + newlines,
                        "visual_kept": kept + newlines, "visual_newlines_before": newlines,
                        "visual_newlines_after": newlines, "flops": flops}}

    samples = tmp_path / "x_samples_mc.jsonl"
    lines = [{"token_counts": [record(4, 1e12), record(4, 2e12)]},  # one request per choice: FLOPs add up
             {"token_counts": [record(8, 1e12, newlines=2)]}]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert sample_costs((samples,)) == {
        "samples": 2, "visual_tokens": {"before": 65, "llm_input": 7, "kept": 7},
        "content_tokens": {"before": 64, "llm_input": 6, "kept": 6},
        "newline_tokens": {"before": 1, "llm_input": 1, "kept": 1}, "tflops_per_sample": 2.0}
    samples.write_text(json.dumps({"token_counts": [record(4, None)]}) + "\n")
    assert sample_costs((samples,))["tflops_per_sample"] is None


def test_summary_orders_rows_and_relates_them_to_the_unreduced_model():
    rows = [row("divprune", 4, 0.25, 1.0, 4), row("none", None, 0.5, 4.0, 64), row("fastv", 4, 0.0, 2.0, 4),
            row("divprune", 8, 0.5, 1.5, 8)]
    text = summary_markdown(SETUP, ordered(rows), [("vtr_colors", "exact_match,none")])
    assert [line for line in text.splitlines() if line.startswith("| ")][1:] == [
        "| none | – | 0.5 | 64 | 0 | 4 |",
        "| divprune | 8 | 0.5 (100.0%) | 8 | 0 | 1.5 (37.5%) |",
        "| divprune | 4 | 0.25 (50.0%) | 4 | 0 | 1 (25.0%) |",
        "| fastv | 4 | 0 (0.0%) | 64 → 4 | 0 | 2 (50.0%) |",
    ]
    onevision = summary_markdown(SETUP, [row("divprune", 8, 0.5, 1.5, 8, newlines=1)],
                                 [("vtr_colors", "exact_match,none")])
    assert "| divprune | 8 | 0.5 | 8 | 1 | 1.5 |" in onevision


def test_report_writes_every_plot_without_flops_too(tmp_path):
    written = write_report(tmp_path, SETUP, [row("none", None, 0.5, None, 64), row("divprune", 4, 0.25, None, 4, 2)])
    assert [path.name for path in written] == ["summary.md", "score_vs_budget.png", "score_vs_tflops.png",
                                               "score_vs_content_tokens.png"]
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


def test_summary_links_each_configs_picture():
    rows = [{**row("none", None, 0.5, 4.0, 64), "picture": "pictures/none.png"},
            {**row("divprune", 4, 0.25, 1.0, 4), "picture": None}]
    text = summary_markdown(SETUP, rows, [("vtr_colors", "exact_match,none")])
    assert text.splitlines()[-2:] == ["- [none](pictures/none.png)", "- divprune budget=4: no picture (see its log)"]
    assert "## What each config kept" not in summary_markdown(SETUP, [row("none", None, 0.5, 4.0, 64)], [])
