"""``vtr sweep`` end to end: real lmms-eval subprocesses on tiny checkpoints saved with save_pretrained.

Each scenario is a chain of steps on one sweep directory. They run at once from one test: their time
goes into lmms-eval subprocesses (each mostly the start of a fresh interpreter), and pytest-xdist would
otherwise likely give them to one worker. Steps that start no lmms-eval run (a resume with nothing left, a
refusal before anything runs) call the sweep's ``main`` in this process instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GRID = ["--budgets", "8"]  # one budget: the report's ordering of several is test_sweep_parts's
HAS_FLOPS = importlib.util.find_spec("vtr.measure.flops") is not None
LLAVA_ARGS = "device=cpu,device_map=cpu,dtype=float32"
QWEN_ARGS = "device=cpu,device_map=cpu,min_pixels=1024,max_pixels=4096,max_num_frames=4"
INTERNVL_ARGS = "device=cpu,device_map=cpu,dtype=float32,max_patches=4"
GEMMA3_ARGS = "device=cpu,device_map=cpu,dtype=bfloat16"  # lmms-eval's gemma3 class casts inputs to bfloat16


def vtr_sweep(*argv: str) -> subprocess.CompletedProcess:
    """``vtr sweep ARGV`` in a subprocess; one thread each, as the scenarios run side by side on tiny models."""
    return subprocess.run([sys.executable, "-m", "vtr.eval.sweep", *argv], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def keyed(rows: list[dict]) -> dict[tuple, dict]:
    return {(row["method"], row["budget"]): row for row in rows}


def logged_samples(row: dict, task: str) -> list[dict]:
    [path] = Path(row["output_dir"]).glob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_report(out: Path, rows: list[dict], columns: list[str]) -> None:
    lines = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    header, *body = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    assert header == ["method", "budget", *columns, "content tokens", "newline tokens", "TFLOPs / sample"]
    assert [cells[:2] for cells in body] == [[row["method"], "–" if row["budget"] is None else str(row["budget"])]
                                             for row in rows]
    for name in ("score_vs_budget.png", "score_vs_tflops.png", "score_vs_content_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    for row in rows:  # each config's picture of its first sample, next to summary.md and linked from it
        assert row["picture"].startswith("pictures/") and f"]({row['picture']})" in summary
        assert (out / row["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_flops(rows: list[dict]) -> None:
    """FLOPs are recorded when vtr.measure.flops exists (and every reduction is cheaper than none)."""
    flops = {key: row["tflops_per_sample"] for key, row in keyed(rows).items()}
    if not HAS_FLOPS:
        assert set(flops.values()) == {None}
        return
    reference = flops.pop(("none", None))
    assert all(0 < value < reference for value in flops.values())


def llava_command(out: Path, checkpoint: str, methods: str, model_args: str = LLAVA_ARGS,
                  grid: tuple[str, ...] = tuple(GRID)) -> list[str]:
    return ["--model", "vtr_llava_hf", "--pretrained", checkpoint, "--tasks", "vtr_colors,vtr_colors_mc",
            "--limit", "2", "--out", str(out), "--force-simple", "--model-args", model_args, "--methods", methods,
            *grid]


def llava_scenario(out: Path, checkpoint: str) -> None:
    """Image + multiple-choice tasks; a config failing during its run (the last) ends the sweep, the finished
    ones kept."""
    # pdrop cannot average 8 tokens over 4 layers: the model raises at generate time, which lmms-eval's class
    # would turn into an empty answer; vtr's class aborts the run (exit 1), the sweep names the config and keeps
    # what is done
    first = vtr_sweep(*llava_command(out, checkpoint, "none,divprune,fastv,pdrop"))
    assert first.returncode == 1, first.stderr
    assert "pdrop budget=8 failed: vtr: VtrLlavaHf on vtr_colors" in first.stderr
    assert "cannot average 8 visual tokens" in first.stderr and "lmms-eval exit code 1," in first.stderr
    rows = rows_of(out)
    assert [(row["method"], row["budget"]) for row in rows] == [("none", None), ("divprune", 8), ("fastv", 8)]
    for row in rows:
        assert set(row["scores"]) == {"vtr_colors", "vtr_colors_mc"} and row["samples"] == 4  # 2 docs x 2 tasks
        assert Path(row["results_file"]).is_file()
    tokens = {key: row["visual_tokens"] for key, row in keyed(rows).items()}
    assert tokens[("none", None)] == {"before": 64, "llm_input": 64, "kept": 64}
    assert tokens[("divprune", 8)] == {"before": 64, "llm_input": 8, "kept": 8}
    assert tokens[("fastv", 8)] == {"before": 64, "llm_input": 64, "kept": 8}  # pruned inside the LLM
    check_flops(rows)
    check_report(out, rows, ["vtr_colors exact_match", "vtr_colors_mc acc"])
    # loglikelihood requests run reduced: each of the 6 choices of a sample logs its own record
    choices = logged_samples(keyed(rows)[("divprune", 8)], "vtr_colors_mc")
    assert [len(sample["token_counts"]) for sample in choices] == [6, 6]
    assert {entry["vtr"]["visual_kept"] for sample in choices for entry in sample["token_counts"]} == {8}
    assert "[3/4] fastv budget=8: done" in first.stdout


def llava_resume_and_refusal(out: Path, checkpoint: str, capsys) -> None:
    """On the finished llava sweep, in this process (neither starts lmms-eval): the same sweep without the
    failed config does nothing; an option divprune does not have fails before anything runs, naming it."""
    from vtr.eval.sweep import main

    results = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert main(llava_command(out, checkpoint, "none,divprune,fastv")) == 0
    again = capsys.readouterr().out
    assert "3 config(s), 3 done earlier, 0 to run" in again and "running" not in again
    assert (out / "results.jsonl").read_text() == results
    assert main(llava_command(out, checkpoint, "fastv,divprune", LLAVA_ARGS + ",layer=2", ("--budgets", "4"))) == 1
    unknown = capsys.readouterr()
    assert "running" not in unknown.out
    assert "divprune budget=4: method 'divprune' has no option(s) ['layer']" in unknown.err
    assert (out / "results.jsonl").read_text() == results


def swept(command: list[str], out: Path, configs: list[tuple]) -> list[dict]:
    """Run a sweep that must succeed with rows for ``configs`` (method, budget), FLOPs recorded."""
    run = vtr_sweep(*command)
    assert run.returncode == 0, run.stderr
    rows = rows_of(out)
    assert [(row["method"], row["budget"]) for row in rows] == configs
    check_flops(rows)
    return rows


def qwen_scenario(out: Path, checkpoint: str) -> None:
    """Image + video tasks; deleting one line of results.jsonl re-runs that config only."""
    command = ["--model", "vtr_qwen2_5_vl", "--pretrained", checkpoint, "--methods", "none,divprune,pool", *GRID,
               "--tasks", "vtr_colors,vtr_video_colors", "--limit", "2", "--out", str(out), "--model-args", QWEN_ARGS]
    rows = swept(command, out, [("none", None), ("divprune", 8), ("pool", 8)])
    check_report(out, rows, ["vtr_colors exact_match", "vtr_video_colors exact_match"])
    for row in rows[1:]:  # one image or one video per sample: the budget is what each keeps
        kept = {entry["vtr"]["visual_kept"] for task in ("vtr_colors", "vtr_video_colors")
                for sample in logged_samples(row, task) for entry in sample["token_counts"]}
        assert kept == {row["budget"]}
    reference = rows[0]["visual_tokens"]
    assert reference["kept"] == reference["before"] > 8

    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:1] + lines[2:]))  # forget divprune budget=8
    rerun = vtr_sweep(*command)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 to run" in rerun.stdout and "[2/3] divprune budget=8: done" in rerun.stdout
    after = rows_of(out)
    assert after[:2] == [rows[0], rows[2]] and (after[2]["method"], after[2]["budget"]) == ("divprune", 8)


def internvl_scenario(out: Path, checkpoint: str) -> None:
    """lmms-eval's internvl_hf chat class (the only one): each image is reduced over all its tiles."""
    command = ["--model", "vtr_internvl_hf", "--pretrained", checkpoint, "--methods", "none,divprune", *GRID,
               "--tasks", "vtr_colors", "--limit", "2", "--out", str(out), "--model-args", INTERNVL_ARGS]
    rows = swept(command, out, [("none", None), ("divprune", 8)])
    check_report(out, rows, ["vtr_colors exact_match"])
    before = rows[0]["visual_tokens"]["before"]
    assert before % 16 == 0 and before > 16  # whole tiles of 16 tokens, several per image
    assert rows[1]["visual_tokens"] == {"before": before, "llm_input": 8, "kept": 8}


def gemma3_scenario(out: Path, checkpoint: str) -> None:
    """lmms-eval's gemma3 class (simple, the only one): 16 pooled tokens per image, reduced to the budget."""
    command = ["--model", "vtr_gemma3", "--pretrained", checkpoint, "--methods", "none,divprune", *GRID,
               "--tasks", "vtr_colors", "--limit", "2", "--out", str(out), "--model-args", GEMMA3_ARGS]
    rows = swept(command, out, [("none", None), ("divprune", 8)])
    check_report(out, rows, ["vtr_colors exact_match"])
    assert rows[0]["visual_tokens"]["before"] == 16
    assert rows[1]["visual_tokens"] == {"before": 16, "llm_input": 8, "kept": 8}


def gemma4_scenario(out: Path, checkpoint: str) -> None:
    """lmms-eval's gemma4 class (simple, the only one) at its smallest budget of 70 pooled tokens per image or
    video frame: images and videos (the class samples the clip's frames) each reduced to the budget."""
    command = ["--model", "vtr_gemma4", "--pretrained", checkpoint, "--methods", "none,divprune", *GRID,
               "--tasks", "vtr_colors,vtr_video_colors", "--limit", "2", "--out", str(out), "--model-args",
               "max_soft_tokens=70"]  # no device: vtr's loading picks one, as for a user
    rows = swept(command, out, [("none", None), ("divprune", 8)])
    check_report(out, rows, ["vtr_colors exact_match", "vtr_video_colors exact_match"])
    image = {entry["vtr"]["visual_before"] for sample in logged_samples(rows[0], "vtr_colors")
             for entry in sample["token_counts"]}
    video = {entry["vtr"]["visual_before"] for sample in logged_samples(rows[0], "vtr_video_colors")
             for entry in sample["token_counts"]}
    assert max(image) <= 70 < min(video)  # a clip is several frames of up to 70 tokens each
    kept = {entry["vtr"]["visual_kept"] for task in ("vtr_colors", "vtr_video_colors")
            for sample in logged_samples(rows[1], task) for entry in sample["token_counts"]}
    assert kept == {8}


def qwen3_5_scenario(out: Path, checkpoint: str) -> None:
    """Qwen3.5's hybrid stack: a pre-LLM method, and an in-LLM one scoring at the full-attention layer 1."""
    command = ["--model", "vtr_qwen3_5", "--pretrained", checkpoint, "--methods", "none,divprune,fastv", *GRID,
               "--tasks", "vtr_colors", "--limit", "2", "--out", str(out), "--model-args", QWEN_ARGS]
    rows = swept(command, out, [("none", None), ("divprune", 8), ("fastv", 8)])
    check_report(out, rows, ["vtr_colors exact_match"])
    before = rows[0]["visual_tokens"]["before"]
    assert rows[1]["visual_tokens"] == {"before": before, "llm_input": 8, "kept": 8}
    assert rows[2]["visual_tokens"] == {"before": before, "llm_input": before, "kept": 8}


def test_sweeps_end_to_end_on_tiny_llava_qwen_internvl_gemma_and_qwen3_5(tmp_path, checkpoint, capsys):
    scenarios = {llava_scenario: checkpoint("llava"), qwen_scenario: checkpoint("qwen2_5_vl"),
                 internvl_scenario: checkpoint("internvl"), gemma3_scenario: checkpoint("gemma3"),
                 gemma4_scenario: checkpoint("gemma4"), qwen3_5_scenario: checkpoint("qwen3_5")}
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = [pool.submit(scenario, tmp_path / scenario.__name__, path) for scenario, path in scenarios.items()]
    for future in futures:
        future.result()
    llava_resume_and_refusal(tmp_path / llava_scenario.__name__, checkpoint("llava"), capsys)
