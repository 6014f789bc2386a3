"""``vtr sweep``: one lmms-eval run per (method, budget), resumable, then a table and plots.

    vtr sweep --model vtr_llava_hf --pretrained llava-hf/llava-1.5-7b-hf --methods none,divprune,fastv \\
        --budgets 192,128,64 --tasks mme,gqa --out runs/llava

Each finished config becomes one line of ``DIR/results.jsonl`` (written atomically); a config whose
line is there is skipped, so re-running the command resumes an interrupted sweep, and deleting a line
re-runs that config only. A run that leaves no results for every task stops the sweep with a non-zero
exit code and the config named; finished lines stay. Ctrl-C and SIGTERM end the running config's
lmms-eval processes and record nothing of it; ``DIR/sweep.lock`` keeps a second live sweep out. ``DIR/summary.md`` and the plots are rebuilt
from ``results.jsonl`` at the end of every invocation. The CLI registers ``add_sweep_arguments`` and
calls ``run_sweep``.

Without ``--model``/``--pretrained``/``--tasks`` the sweep runs vtr's shipped tiny LLaVA (``vtr.assets``)
on the synthetic benchmark (``vtr_synthetic``) on the CPU, into ``$XDG_DATA_HOME/vtr/runs/sweep-tiny-llava-synth``
(``~/.local/share/vtr/...`` when ``XDG_DATA_HOME`` is unset), at the
budgets 0.5, 0.25 and 0.11: ``vtr sweep --methods none,random,divprune`` is a whole offline sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vtr.eval.lmms import MODEL_IDS
from vtr.eval.outputs import summarize_run
from vtr.eval.pictures import PICTURE_ENV, PICTURES_DIR
from vtr.eval.plan import Config, SweepError, SweepSetup, plan_configs
from vtr.eval.report import write_report
from vtr.eval.runner import (
    LOG_FILE,
    Launch,
    RunFailed,
    data_parallel_launcher,
    lmms_eval_command,
    run_lmms_eval,
    write_task_paths,
)
from vtr.eval.store import ResultStore, SweepLock

RESERVED_MODEL_ARGS = {"pretrained": "--pretrained", "method": "--methods", "budget": "--budgets"}
DEFAULT_MODEL, DEFAULT_TASK, DEFAULT_BUDGETS = "vtr_llava_hf", "vtr_synthetic", [0.5, 0.25, 0.11]
# the shipped model is tiny: it runs on the CPU even where there is a GPU; a user's keys win
DEFAULT_MODEL_ARGS = {"device": "cpu", "device_map": "cpu", "dtype": "float32"}


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_IDS,
                        help=f"vtr's lmms-eval model (family); default {DEFAULT_MODEL}")
    parser.add_argument("--pretrained", default=None,
                        help="checkpoint directory or hub id; default: vtr's shipped tiny LLaVA (on the CPU) when "
                             f"--model is {DEFAULT_MODEL}")
    parser.add_argument("--methods", type=_names, required=True,
                        help="comma-separated; 'none' = the unreduced reference (run once); '+' composes stages")
    parser.add_argument("--budgets", type=_budgets, default=DEFAULT_BUDGETS,
                        help="comma-separated ints (visual tokens kept per image/video) or fractions in (0, 1]; "
                             "default 0.5,0.25,0.11")
    parser.add_argument("--tasks", type=_names, default=[DEFAULT_TASK],
                        help=f"comma-separated lmms-eval tasks (default {DEFAULT_TASK}); vtr's offline tasks "
                             "(vtr_synthetic, vtr_colors, vtr_colors_mc, vtr_video_colors) are always found")
    parser.add_argument("--limit", type=_number, default=None,
                        help="documents per task (int) or fraction of each task; for quick checks only")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep directory (created; resumed if it exists); required with --pretrained, "
                             "else $XDG_DATA_HOME/vtr/runs/sweep-tiny-llava-synth (~/.local/share/vtr/... when unset)")
    parser.add_argument("--include-path", action="append", default=[],
                        help="another directory of lmms-eval task YAMLs (repeatable)")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="> 1: each config runs data parallel on N ranks (accelerate launch --multi_gpu with a "
                             "GPU per rank, torchrun on CPUs); the sweep checks that N ranks ran")
    parser.add_argument("--model-args", default="",
                        help="more k=v,... for the model: loading keys for every family (device, device_map, "
                             "dtype, attn_implementation; default: the only GPU, else the CPU), the lmms-eval "
                             "class's own (max_pixels=..., max_frames_num=...) and method options (layer=2)")
    parser.add_argument("--force-simple", action="store_true",
                        help="use lmms-eval's simple model class; needed for multiple-choice (loglikelihood) tasks")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's timeout or preemption), handled like Ctrl-C."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def run_sweep(args: argparse.Namespace) -> int:
    """Run every config not yet in ``DIR/results.jsonl``; 0 when all are done, 1 (message on stderr) if not,
    130 after Ctrl-C and 143 after SIGTERM (the running config's lmms-eval processes are ended first)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        _sweep(args)
    except SweepError as error:
        print(f"vtr sweep: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        cause = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"vtr sweep: {cause}; the running config was stopped and not recorded, finished configs are in "
              f"results.jsonl: run the same command to go on", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _sweep(args: argparse.Namespace) -> None:
    setup = _setup(args)
    configs = plan_configs(args.methods, args.budgets)
    _check_configs(configs, setup.model_args)
    out = _out_dir(args).resolve()
    gpus = _gpu_count() if args.num_processes > 1 else 0
    if args.num_processes > 1:
        try:
            data_parallel_launcher(args.num_processes, gpus)
        except ValueError as error:
            raise SweepError(f"{error}; nothing ran") from None
    out.mkdir(parents=True, exist_ok=True)
    with SweepLock(out):
        store = ResultStore(out)
        store.claim(setup)
        done = store.done()
        pending = [config for config in configs if config.key not in done]
        print(f"vtr sweep -> {out}: {len(configs)} config(s), {len(configs) - len(pending)} done earlier, "
              f"{len(pending)} to run", flush=True)
        task_paths = write_task_paths(out, args.include_path)
        progress = _Progress(configs, len(pending))
        try:
            for config in pending:
                run_dir = out / "runs" / config.slug
                launch = lmms_eval_command(setup, config, run_dir, task_paths, args.num_processes, gpus)
                picture = out / PICTURES_DIR / f"{config.slug}.png"
                picture.unlink(missing_ok=True)  # an earlier attempt's must not pass for this run's
                launch = dataclasses.replace(launch, env={**launch.env, PICTURE_ENV: str(picture)})
                row = _run_config(config, launch, run_dir, setup.tasks, progress)
                row["picture"] = picture.relative_to(out).as_posix() if picture.is_file() else None
                store.append(row)
        finally:
            rows = store.rows()
            if rows:
                written = write_report(out, setup, rows)
                print(f"vtr sweep: {len(rows)} config(s) in {store.path}; report: "
                      f"{', '.join(path.name for path in written)}", flush=True)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run_config(config: Config, launch: Launch, run_dir: Path, tasks: tuple[str, ...],
                progress: _Progress) -> dict[str, Any]:
    """Run one config and return its results.jsonl line; ``SweepError`` naming it if it fails."""
    prefix = progress.start(config)
    log = run_dir / LOG_FILE
    print(f"{prefix}: running (log: {log})", flush=True)
    try:
        run = run_lmms_eval(launch, run_dir, tasks,
                            on_wait=lambda elapsed: print(f"{prefix}: still running, {_clock(elapsed)}", flush=True))
    except RunFailed as failure:
        raise SweepError(
            f"{prefix} failed: {failure}\n  log: {log}\n  finished configs stay in results.jsonl; fix the cause "
            f"and run the same command to go on"
        ) from None
    row = {"method": config.method, "budget": config.budget, **summarize_run(run),
           "wall_time_s": round(run.wall_time_s, 1), "processes": launch.processes, "device": run.device,
           "output_dir": str(run.results_file.parent),
           "results_file": str(run.results_file),
           "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    ranks = f"{launch.processes} ranks, rank 0" if launch.processes > 1 else "model"
    print(f"{prefix}: done in {_clock(run.wall_time_s)} ({ranks} on {run.device}); {progress.finish(run.wall_time_s)}; "
          f"{_brief(row)}", flush=True)
    return row


class _Progress:
    """``[i/n] config`` (its place in the whole sweep), time since this invocation started, and a naive
    estimate of what is left (mean run time so far x runs still to go)."""

    def __init__(self, configs: list[Config], to_run: int) -> None:
        self.configs, self.to_run, self.finished, self.spent = configs, to_run, 0, 0.0
        self.started = time.monotonic()

    def start(self, config: Config) -> str:
        return f"[{self.configs.index(config) + 1}/{len(self.configs)}] {config.label}"

    def finish(self, wall_time_s: float) -> str:
        self.finished += 1
        self.spent += wall_time_s
        left = (self.to_run - self.finished) * self.spent / self.finished
        return f"sweep elapsed {_clock(time.monotonic() - self.started)}, about {_clock(left)} left"


def _setup(args: argparse.Namespace) -> SweepSetup:
    model_args = args.model_args.strip().strip(",")
    given = _parse_model_args(model_args)
    for key in given:
        if key in RESERVED_MODEL_ARGS:
            raise SweepError(f"--model-args sets {key!r}; the sweep sets it per run: use {RESERVED_MODEL_ARGS[key]}")
    pretrained = args.pretrained
    if pretrained is None:
        if args.model != DEFAULT_MODEL:
            raise SweepError(f"--model {args.model} needs --pretrained (a checkpoint directory or hub id); only "
                             f"{DEFAULT_MODEL} has a default, vtr's shipped tiny LLaVA")
        from vtr.assets import tiny_llava_synth

        pretrained = str(tiny_llava_synth())
        defaults = ",".join(f"{key}={value}" for key, value in DEFAULT_MODEL_ARGS.items() if key not in given)
        model_args = ",".join(part for part in (defaults, model_args) if part)
    return SweepSetup(model=args.model, pretrained=pretrained, tasks=tuple(args.tasks), limit=args.limit,
                      model_args=model_args, force_simple=args.force_simple)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.pretrained is not None:
        raise SweepError("--out is required with --pretrained (the sweep directory, created or resumed)")
    from vtr.assets import NAME

    return user_data_dir() / "runs" / f"sweep-{NAME}"


def user_data_dir() -> Path:
    """Where a sweep without ``--out`` goes: ``$XDG_DATA_HOME/vtr`` (``~/.local/share/vtr`` when unset), a
    per-user directory, so a sweep started inside a repository or any other folder leaves nothing there."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vtr"


def _check_configs(configs: list[Config], model_args: str) -> None:
    """Reject up front a config every run of which would fail: an unknown method, an invalid budget, or a
    method option (a ``--model-args`` key that some vtr method takes) that its methods lack. Keys no vtr
    method takes are lmms-eval's to judge, at run time."""
    from vtr.eval.models.base import configure, method_option_names

    option_names = method_option_names()
    options = {key: value for key, value in _parse_model_args(model_args).items() if key in option_names}
    for config in configs:
        try:
            configure(config.method, config.budget, options)
        except ValueError as error:
            raise SweepError(
                f"{config.label}: {error}. Nothing ran; fix --methods, --budgets or --model-args") from None


def _parse_model_args(model_args: str) -> dict[str, Any]:
    """``k=v,...`` exactly as lmms-eval will parse it (numbers, booleans, bracketed lists kept whole)."""
    from lmms_eval.utils import simple_parse_args_string

    return simple_parse_args_string(model_args)


def _brief(row: dict[str, Any]) -> str:
    scores = ", ".join(f"{task} {metric.removesuffix(',none')}={value:.4g}"
                       for task, metrics in row["scores"].items() for metric, value in metrics.items())
    tokens, newlines = row["content_tokens"], row["newline_tokens"]
    visual = "visual tokens n/a" if tokens is None else f"content tokens kept {tokens['kept']:.4g}" + (
        f" (+{newlines['kept']:.4g} newlines)" if newlines["kept"] else "")
    tflops = row["tflops_per_sample"]
    return f"{scores}; {visual}; " + ("TFLOPs n/a" if tflops is None else f"{tflops:.4g} TFLOPs/sample")


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _budgets(text: str) -> list[int | float]:
    """'192,0.25' -> [192, 0.25]: ints are tokens kept per image/video, floats fractions (vtr.Budget)."""
    return [_number(part) for part in _names(text)]


def main(argv: list[str] | None = None) -> int:
    """``python -m vtr.eval.sweep ...``: the sweep without the ``vtr`` command."""
    parser = argparse.ArgumentParser(prog="vtr sweep", description="one lmms-eval run per (method, budget)")
    add_sweep_arguments(parser)
    return run_sweep(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
