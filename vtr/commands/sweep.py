"""``vtr sweep``: methods x budgets x tasks through lmms-eval, resumable, with a summary (``vtr.eval.sweep``)."""

from __future__ import annotations

import argparse

HELP = "methods x budgets x tasks through lmms-eval: resumable, with a summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vtr.eval.sweep import add_sweep_arguments

    add_sweep_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from vtr.eval.sweep import run_sweep

    return run_sweep(args)
