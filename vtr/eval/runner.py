"""One lmms-eval run as a subprocess, and the check that it really produced results.

lmms-eval 0.7.x catches errors during evaluation, logs them and exits 0, so the exit code alone says
little: a run counts only if its results JSON exists and holds every requested task, and, for a
data-parallel run, if the log shows every rank's vtr model (``vtr model: rank R/N on ...``). The
subprocess runs in its own process group: an interrupted sweep (Ctrl-C, SIGTERM) ends all of it
(accelerate or torchrun and every rank), so nothing keeps writing into the run folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
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
_RANK_LINE = re.compile(r"vtr model: rank (\d+)/(\d+) on (.*)$", re.MULTILINE)
_ABORT = "EvaluationAborted: "  # vtr's model classes' own failure line: the cause, named
# datasets (through lmms-eval's retries) reports a missing data file as RetryError[<Future ... FileNotFoundError>]
_MISSING_FILE = re.compile(r"FileNotFoundError: (.*)$", re.MULTILINE)
_STOP_GRACE_S = 10.0
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
    """Where a successful run left its results, how long it took, and where its model ran."""

    results_file: Path
    samples_files: tuple[Path, ...]
    wall_time_s: float
    device: str  # rank 0's "cpu (no GPU found); dtype ..."

    def results(self) -> dict[str, Any]:
        return json.loads(self.results_file.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Launch:
    """The command of one run and what it adds to the environment."""

    command: list[str]
    env: dict[str, str]
    processes: int


def write_task_paths(directory: Path, include_paths: list[str]) -> Path:
    """An lmms-eval ``--config`` file listing vtr's task directory and the user's ones.

    lmms-eval's ``--include_path`` takes one directory on the command line but a list in a config file.
    """
    paths = [str(TASKS_DIR)] + [str(Path(path).resolve()) for path in include_paths]
    path = directory / "lmms_eval_tasks.yaml"
    write_atomic(path, "include_path:\n" + "".join(f"  - {json.dumps(p)}\n" for p in paths))
    return path


def lmms_eval_command(setup: SweepSetup, config: Config, output_dir: Path, task_paths: Path,
                      num_processes: int, gpus: int) -> Launch:
    """``python -m lmms_eval ...``, or data parallel over ``num_processes`` ranks (``data_parallel_launcher``)."""
    launcher, env = data_parallel_launcher(num_processes, gpus) if num_processes > 1 else ([sys.executable], {})
    model_args = ",".join(part for part in (f"pretrained={setup.pretrained}", config.model_args, setup.model_args)
                          if part)
    command = [*launcher, "-m", "lmms_eval", "--config", str(task_paths), "--model", setup.model, "--model_args",
               model_args, "--tasks", ",".join(setup.tasks), "--batch_size", "1", "--output_path", str(output_dir),
               "--log_samples"]
    if setup.limit is not None:
        command += ["--limit", str(setup.limit)]
    if setup.force_simple:
        command.append("--force_simple")
    return Launch(command, env, num_processes)


def data_parallel_launcher(num_processes: int, gpus: int) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) for ``num_processes`` data-parallel ranks, said explicitly.

    With a GPU per rank: ``accelerate launch --multi_gpu`` (without the flag accelerate silently runs one
    process wherever it does not detect several GPUs). Without GPUs: torchrun with
    ``ACCELERATE_USE_CPU=true``, which makes lmms-eval's Accelerator a gloo group of CPU ranks
    (``accelerate launch`` offers multi-CPU only through MPI). Fewer GPUs than ranks: ``ValueError``.
    """
    if gpus == 0:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(num_processes)], {"ACCELERATE_USE_CPU": "true"}
    if gpus < num_processes:
        raise ValueError(f"--num-processes {num_processes} needs a GPU per process; this machine has {gpus}")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())], {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_lmms_eval(launch: Launch, run_dir: Path, tasks: tuple[str, ...],
                  on_wait: Callable[[float], None], heartbeat_s: float = 60.0) -> RunOutput:
    """Run ``launch`` in a fresh ``run_dir`` (output and ``lmms_eval.log``); raise ``RunFailed`` unless it
    wrote results for every task on every rank. ``on_wait(elapsed_s)`` is called every ``heartbeat_s``
    while it runs. Any exception while waiting (KeyboardInterrupt: Ctrl-C or the sweep's SIGTERM)
    ends the run's whole process group first."""
    shutil.rmtree(run_dir, ignore_errors=True)  # leftovers of an interrupted attempt must not count
    run_dir.mkdir(parents=True)
    log = run_dir / LOG_FILE
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(launch.command)}\n")
        out.flush()
        process = subprocess.Popen(launch.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **launch.env})
        try:
            while True:
                try:
                    returncode = process.wait(timeout=heartbeat_s)
                    break
                except subprocess.TimeoutExpired:
                    on_wait(time.monotonic() - start)
        except BaseException:
            stop_process_group(process)
            raise
    return _outputs(run_dir, tasks, returncode, time.monotonic() - start, launch.processes)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group ``process`` leads, SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if grace is not None and not _group_alive(process.pid):
            break
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _outputs(run_dir: Path, tasks: tuple[str, ...], returncode: int, wall_time_s: float,
             processes: int) -> RunOutput:
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
    return RunOutput(results_file, samples, wall_time_s, _devices(log, processes))


def _devices(log: Path, processes: int) -> str:
    """Rank 0's device line, once the log shows that exactly ranks 0..processes-1 of ``processes`` ran."""
    ranks = {(int(rank), int(size)): where.strip()
             for rank, size, where in _RANK_LINE.findall(_ANSI.sub("", log.read_text(encoding="utf-8")))}
    expected = {(rank, processes) for rank in range(processes)}
    if set(ranks) != expected:
        seen = ", ".join(f"{rank}/{size}" for rank, size in sorted(ranks)) or "none"
        raise RunFailed(
            f"asked for {processes} process(es), but the log shows vtr model rank(s) {seen} (rank/processes); the "
            f"launcher did not run {processes} data-parallel ranks, so the results cannot be trusted"
        )
    return ranks[(0, processes)]


def failure_reason(log: Path) -> str:
    """Why a run failed, from its log: vtr's own abort line, a missing file, else the last error line,
    plus a hint where the fix is not obvious from it."""
    text = _ANSI.sub("", log.read_text(encoding="utf-8", errors="replace"))
    lines = text.splitlines()
    aborts = [line.split(_ABORT, 1)[1] for line in lines if _ABORT in line]
    missing = _MISSING_FILE.findall(text)
    errors = [line.strip() for line in lines if _ERROR_LINE.search(line)]
    if aborts:
        reason = aborts[-1]
    elif missing:
        reason = f"FileNotFoundError: {missing[-1].strip()} (check the task's dataset_path / data_files)"
    else:
        reason = errors[-1].split(" - ", 1)[-1] if errors else "lmms-eval logged no error"
    hints = [hint for message, hint in _HINTS.items() if message in text]
    return "; ".join([reason, *hints])
