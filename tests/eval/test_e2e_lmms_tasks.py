"""lmms-eval's own task definitions, offline, through ``vtr sweep`` as a user runs it (no device arguments).

For mme (image, generate), seedbench_ppl (image, loglikelihood) and videomme (video) the test writes a
few documents in the task's schema, and a YAML that ``include:``s the installed one and only points
it at those files, so lmms-eval's own prompts, ``process_results`` and aggregations run. Scores are
recomputed here with the task's own utils from the logged answers. The LLaVA sweep also runs data
parallel over two ranks (CPU ranks on a machine without GPUs) and is stopped with SIGTERM part way.

Cost: five lmms-eval runs (one stopped while loading), in two threads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lmms_eval
import psutil
import pytest
import torch
from datasets import Dataset, Features, Image, Sequence, Value

from vtr.assets import tiny_llava_synth
from vtr.eval import synthetic
from vtr.eval.tasks.utils import video_doc_to_visual

INSTALLED = Path(lmms_eval.__file__).parent / "tasks"
GPUS = torch.cuda.device_count()
EXPECTED_DEVICE = {0: "cpu (no GPU found)", 1: "cuda:0 (the only GPU)"}.get(GPUS, f"cuda:0 (GPU 0 of {GPUS}")
EXPECTED_RANK_0 = "cuda:0 (rank 0 of 2: GPU 0)" if GPUS else "cpu (rank 0 of 2, no GPU found)"
RANKS = 1 if GPUS == 1 else 2  # one GPU cannot hold two ranks (the sweep refuses, test_sweep_parts checks)


def task_utils(task: str):
    """The installed task's own ``utils.py``."""
    spec = importlib.util.spec_from_file_location(f"{task}_utils", INSTALLED / task / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_task(directory: Path, name: str, installed: str, data: str, dataset_path: str, extra: str = "") -> None:
    (directory / f"{name}.yaml").write_text(
        f"include: {INSTALLED / installed}\ntask: {name}\ndataset_path: {dataset_path}\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / data}\n{extra}")


@dataclass(frozen=True)
class LocalTasks:
    directory: Path
    hf_home: Path  # videomme reads its videos from $HF_HOME/videomme/data
    documents: dict[str, list[dict]]  # per task, without images (lmms-eval's sample logs omit the documents)


def questions(kind: str, indices: range) -> list[synthetic.Sample]:
    """Test samples of one question type of the synthetic benchmark, which the shipped tiny LLaVA answers."""
    return [sample for sample in synthetic.samples("test", 60) if sample.question_type == kind][:len(indices)]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> LocalTasks:
    """local_mme, local_seedbench_ppl and local_videomme: the installed tasks on a few local documents."""
    directory, hf_home = tmp_path_factory.mktemp("tasks"), tmp_path_factory.mktemp("hf_home")
    # MME scores pairs of yes/no questions (one pair per question_id); the shipped model's vocabulary lacks
    # MME's post-prompt words, so this copy asks the question alone (MME's own prompt for some models)
    presence = questions("presence", range(4))
    mme = {"question_id": ["existence/1", "existence/1", "commonsense/1", "commonsense/1"],
           "question": [sample.question for sample in presence],
           "answer": [sample.answer.capitalize() for sample in presence],
           "category": ["existence", "existence", "commonsense_reasoning", "commonsense_reasoning"]}
    images = {"image": [sample.image() for sample in presence]}
    features = Features({key: Value("string") for key in mme} | {"image": Image()})
    Dataset.from_dict(mme | images, features=features).to_parquet(directory / "mme.parquet")
    local_task(directory, "local_mme", "mme/mme.yaml", "mme.parquet", "parquet",
               "lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: ''\n    post_prompt: ''\n")

    colors = questions("color", range(2))
    choices = [[sample.answer] + [color for color in synthetic.COLORS if color != sample.answer][:3]
               for sample in colors]
    seed = {"question_id": ["1", "2"], "question": [sample.question for sample in colors],
            **{f"choice_{letter}": [options[i] for options in choices] for i, letter in enumerate("abcd")},
            "answer": ["A", "A"]}
    features = Features({key: Value("string") for key in seed} | {"image": Sequence(Image())})
    Dataset.from_dict(seed | {"image": [[sample.image()] for sample in colors]}, features=features).to_parquet(
        directory / "seedbench.parquet")
    local_task(directory, "local_seedbench_ppl", "seedbench/seedbench_ppl.yaml", "seedbench.parquet", "parquet")

    videos = hf_home / "videomme" / "data"
    videos.mkdir(parents=True)
    videomme = []
    for index, (color, answer) in enumerate([("red", "A"), ("blue", "B")]):
        [clip] = video_doc_to_visual({"color": color})
        shutil.copy(clip, videos / f"clip{index}.mp4")
        videomme.append({"videoID": f"clip{index}", "question_id": f"{index}-1", "duration": "short",
                         "domain": "Knowledge", "sub_category": "Geography", "task_type": "Attribute Perception",
                         "question": "What is the background color?", "answer": answer,
                         "options": ["A. red", "B. blue", "C. green", "D. black"]})
    (directory / "videomme.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in videomme))
    local_task(directory, "local_videomme", "videomme/videomme.yaml", "videomme.jsonl", "json")
    rows = lambda columns: [dict(zip(columns, values)) for values in zip(*columns.values())]  # noqa: E731
    return LocalTasks(directory, hf_home, {"local_mme": rows(mme), "local_seedbench_ppl": rows(seed),
                                           "local_videomme": videomme})


def sweep_command(out: Path, checkpoint: str, model: str, tasks: LocalTasks, *argv: str) -> list[str]:
    return [sys.executable, "-m", "vtr.eval.sweep", "--model", model, "--pretrained", checkpoint, "--out", str(out),
            "--include-path", str(tasks.directory), *argv]


def environment(tasks: LocalTasks) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tasks.hf_home), "OMP_NUM_THREADS": "1"}


def run(command: list[str], tasks: LocalTasks) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment(tasks))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def answers(row: dict, task: str, tasks: LocalTasks) -> list[tuple[dict, object]]:
    """(document, logged answer) of every sample of ``task`` in the run of ``row``."""
    [path] = Path(row["output_dir"]).glob(f"*_samples_{task}.jsonl")
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    return [(tasks.documents[task][sample["doc_id"]], sample["filtered_resps"]) for sample in samples]


def results_json(row: dict) -> dict:
    return json.loads(Path(row["results_file"]).read_text())


def check_vtr_counts(row: dict, content_kept: float, newlines: float) -> None:
    """Token counts in the sweep's row (from the sample logs) and, the same, in lmms-eval's results JSON."""
    assert row["content_tokens"]["kept"] == content_kept and row["newline_tokens"]["kept"] == newlines
    assert row["device"].startswith(EXPECTED_DEVICE if row["processes"] == 1 else EXPECTED_RANK_0)
    throughput = results_json(row)["throughput"]
    assert throughput["avg_vtr_samples"] == row["samples"]
    assert throughput["avg_vtr_content_tokens_kept"] == content_kept
    assert throughput["avg_vtr_visual_tokens_before"] == row["visual_tokens"]["before"]


def check_mme(row: dict, tasks: LocalTasks) -> dict[str, float]:
    """MME's scores are MME's aggregation of MME's own scoring of the logged answers."""
    mme = task_utils("mme")
    scored = [mme.mme_process_results(doc, [answer]) for doc, answer in answers(row, "local_mme", tasks)]
    scores = row["scores"]["local_mme"]
    for metric in ("mme_perception_score", "mme_cognition_score"):
        expected = mme.mme_aggregate_results([result[metric] for result in scored if metric in result])
        assert scores[f"{metric},none"] == pytest.approx(expected)
    return scores


def check_seedbench(row: dict, tasks: LocalTasks) -> None:
    """lmms-eval's multiple-choice acc: the choice of lowest NLL is SEED-Bench's target."""
    seed = task_utils("seedbench")
    logged = answers(row, "local_seedbench_ppl", tasks)
    correct = [min(range(4), key=lambda choice: float(answer[choice][0]))
               == seed.seed_doc_to_choice(doc).index(seed.seed_doc_to_mc_target(doc)) for doc, answer in logged]
    assert len(logged) == 2 and row["scores"]["local_seedbench_ppl"]["acc,none"] == sum(correct) / len(correct)


def llava_images_on_two_ranks_with_sigterm(out: Path, llava: str, tasks: LocalTasks) -> None:
    """mme + seedbench_ppl on LLaVA, data parallel over two ranks (CPU ranks without GPUs); SIGTERM while the
    second config runs ends the launcher and both ranks; the resumed sweep completes."""
    command = sweep_command(out, llava, "vtr_llava_hf", tasks, "--tasks", "local_mme,local_seedbench_ppl",
                            "--force-simple", "--methods", "none,divprune", "--budgets", "8",
                            "--num-processes", str(RANKS))
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment(tasks))
    second_log = out / "runs" / "divprune-8" / "lmms_eval.log"
    deadline = time.monotonic() + 600
    while f" rank {RANKS - 1}/{RANKS} on " not in (second_log.read_text() if second_log.exists() else "") \
            and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    children = psutil.Process(sweep.pid).children(recursive=True)
    assert len(children) >= (3 if RANKS == 2 else 1), sweep.communicate()  # the launcher and its ranks
    finished = (out / "results.jsonl").read_text()
    assert len(finished.splitlines()) == 1 and (out / "sweep.lock").read_text() == f"{sweep.pid}\n"
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143 and "terminated (SIGTERM)" in stderr, stderr
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive  # lmms-eval is gone with the sweep
    assert (out / "results.jsonl").read_text() == finished and not (out / "sweep.lock").exists()

    resumed = run(command, tasks)
    assert "2 config(s), 1 done earlier, 1 to run" in resumed.stdout
    assert (out / "results.jsonl").read_text().startswith(finished)
    none, divprune = rows_of(out)
    for row in (none, divprune):
        assert row["processes"] == RANKS
        log = (Path(row["output_dir"]).parent / "lmms_eval.log").read_text()
        assert all(f"vtr model: rank {rank}/{RANKS}" in log for rank in range(RANKS))
        assert len(answers(row, "local_mme", tasks)) == 4  # every rank's documents, gathered
        check_mme(row, tasks)
        check_seedbench(row, tasks)
    # the unreduced shipped model answers these presence questions right: both pairs score 100 + 100
    assert check_mme(none, tasks) == {"mme_perception_score,none": 200.0, "mme_cognition_score,none": 200.0}
    check_vtr_counts(none, content_kept=none["visual_tokens"]["before"], newlines=0)
    check_vtr_counts(divprune, content_kept=8, newlines=0)


def onevision_video(out: Path, onevision: str, tasks: LocalTasks) -> None:
    """videomme on LLaVA-OneVision through lmms-eval's default (chat) class."""
    run(sweep_command(out, onevision, "vtr_llava_hf", tasks, "--tasks", "local_videomme", "--methods", "divprune",
                      "--budgets", "8"), tasks)
    [row] = rows_of(out)
    videomme = task_utils("videomme")
    scored = [videomme.videomme_process_results(doc, [answer]) for doc, answer in answers(row, "local_videomme", tasks)]
    score = videomme.videomme_aggregate_results([result["videomme_perception_score"] for result in scored])
    assert len(scored) == 2
    assert row["scores"]["local_videomme"]["videomme_perception_score,none"] == pytest.approx(score)
    assert "VtrLlavaHfChat" in results_json(row)["config"]["model_backend"]
    check_vtr_counts(row, content_kept=8, newlines=1)  # one newline closes a OneVision video


def qwen_image(out: Path, qwen: str, tasks: LocalTasks) -> None:
    """mme on Qwen2.5-VL with a loading key lmms-eval's Qwen class does not take (dtype)."""
    run(sweep_command(out, qwen, "vtr_qwen2_5_vl", tasks, "--tasks", "local_mme", "--methods", "divprune",
                      "--budgets", "8", "--model-args", "dtype=float32,min_pixels=1024,max_pixels=4096"), tasks)
    [row] = rows_of(out)
    check_mme(row, tasks)
    check_vtr_counts(row, content_kept=8, newlines=0)
    assert "dtype float32" in row["device"]


def test_lmms_eval_tasks_through_vtr_sweep_on_every_family(tmp_path, checkpoint, tasks):
    llava, onevision, qwen = str(tiny_llava_synth()), checkpoint("llava_onevision"), checkpoint("qwen2_5_vl")

    def others() -> None:
        onevision_video(tmp_path / "onevision", onevision, tasks)
        qwen_image(tmp_path / "qwen", qwen, tasks)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(llava_images_on_two_ranks_with_sigterm, tmp_path / "llava", llava, tasks),
                   pool.submit(others)]
    for future in futures:
        future.result()
