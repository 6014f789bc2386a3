"""One lmms-eval run as a subprocess, and the check that it really produced results.

lmms-eval 0.7.x catches errors during evaluation, logs them and exits 0, so the exit code alone says
little: a run counts only if its results JSON exists and holds every requested task.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vtr.eval.plan import Config, SweepSetup
from vtr.eval.store import write_atomic
from vtr.eval.tasks import TASKS_DIR

LOG_FILE = "lmms_eval.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"(Error|Exception)\b")
# lmms-eval messages whose fix is not obvious from the message itself
_HINTS = {
    "Currently messages is used for generation only":
        "a task asks for loglikelihood (multiple choice), which lmms-eval runs with simple models only: add "
        "--force-simple",
}


class RunFailed(Exception):
    """The run produced no usable results; the message says why (from lmms-eval's log where possible)."""


@dataclass(frozen=True)
class RunOutput:
    """Where a successful run left its results, and how long it took."""

    results_file: Path
    samples_files: tuple[Path, ...]
    wall_time_s: float

    def results(self) -> dict[str, Any]:
        return json.loads(self.results_file.read_text(encoding="utf-8"))


def write_task_paths(directory: Path, include_paths: list[str]) -> Path:
    """An lmms-eval ``--config`` file listing vtr's task directory and the user's ones.

    lmms-eval's ``--include_path`` takes one directory on the command line but a list in a config file.
    """
    paths = [str(TASKS_DIR)] + [str(Path(path).resolve()) for path in include_paths]
    path = directory / "lmms_eval_tasks.yaml"
    write_atomic(path, "include_path:\n" + "".join(f"  - {json.dumps(p)}\n" for p in paths))
    return path


def lmms_eval_command(setup: SweepSetup, config: Config, output_dir: Path, task_paths: Path,
                      num_processes: int) -> list[str]:
    """``python -m lmms_eval ...``, or lmms-eval's multi-GPU path through ``accelerate launch``."""
    launcher = [sys.executable, "-m", "lmms_eval"]
    if num_processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                    "-m", "lmms_eval"]
    model_args = ",".join(part for part in (f"pretrained={setup.pretrained}", config.model_args, setup.model_args)
                          if part)
    command = [*launcher, "--config", str(task_paths), "--model", setup.model, "--model_args", model_args,
               "--tasks", ",".join(setup.tasks), "--batch_size", "1", "--output_path", str(output_dir),
               "--log_samples"]
    if setup.limit is not None:
        command += ["--limit", str(setup.limit)]
    if setup.force_simple:
        command.append("--force_simple")
    return command


def run_lmms_eval(command: list[str], run_dir: Path, tasks: tuple[str, ...],
                  on_wait: Callable[[float], None], heartbeat_s: float = 60.0) -> RunOutput:
    """Run ``command`` in a fresh ``run_dir`` (output and ``lmms_eval.log``); raise ``RunFailed`` unless it
    wrote results for every task. ``on_wait(elapsed_s)`` is called every ``heartbeat_s`` while it runs."""
    shutil.rmtree(run_dir, ignore_errors=True)  # leftovers of an interrupted attempt must not count
    run_dir.mkdir(parents=True)
    log = run_dir / LOG_FILE
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    returncode = process.wait(timeout=heartbeat_s)
                    break
                except subprocess.TimeoutExpired:
                    on_wait(time.monotonic() - start)
        except BaseException:  # Ctrl-C: do not leave an evaluation running behind the sweep
            process.kill()
            process.wait()
            raise
    return _outputs(run_dir, tasks, returncode, time.monotonic() - start)


def _outputs(run_dir: Path, tasks: tuple[str, ...], returncode: int, wall_time_s: float) -> RunOutput:
    log = run_dir / LOG_FILE
    results_files = sorted(run_dir.glob("*/*_results.json"))
    if returncode != 0 or not results_files:
        raise RunFailed(f"{failure_reason(log)} (lmms-eval exit code {returncode}, no results file)")
    results_file = results_files[-1]
    results = json.loads(results_file.read_text(encoding="utf-8"))
    found = set(results.get("results", {})) | set(results.get("group_subtasks", {}))
    missing = [task for task in tasks if task not in found]
    if missing:
        raise RunFailed(f"{results_file} has no results for {', '.join(missing)}; {failure_reason(log)}")
    stamp = results_file.name.removesuffix("_results.json")
    samples = tuple(sorted(results_file.parent.glob(f"{stamp}_samples_*.jsonl")))
    if not samples:
        raise RunFailed(f"lmms-eval logged no samples next to {results_file}")
    return RunOutput(results_file, samples, wall_time_s)


def failure_reason(log: Path) -> str:
    """The last error line lmms-eval logged, plus a hint where the fix is not obvious from it."""
    text = _ANSI.sub("", log.read_text(encoding="utf-8", errors="replace"))
    errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.search(line)]
    reason = errors[-1].split(" - ", 1)[-1] if errors else "lmms-eval logged no error"
    hints = [hint for message, hint in _HINTS.items() if message in text]
    return "; ".join([reason, *hints])
