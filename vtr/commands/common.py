"""What several commands share: argument types, user errors, progress lines on stderr."""

from __future__ import annotations

import argparse
import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


class CommandError(Exception):
    """A user error a command reports as one line (``vtr CMD: error: ...``, exit code 2), no traceback."""


def number(text: str) -> int | float:
    """'64' -> 64 (tokens); '0.25' -> 0.25 (a fraction). The range is checked by ``vtr.Budget``."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def names(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return parts


def numbers(text: str) -> list[int | float]:
    """'0.5,64' -> [0.5, 64]: budgets (ints are tokens kept per image/video, floats fractions in (0, 1])."""
    return [number(part) for part in names(text)]


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


class Progress:
    """``[i/n] label (elapsed)`` lines on stderr, so a long command says what it is doing while stdout
    keeps only its result (a table a user may redirect to a file)."""

    def __init__(self, total: int | None = None) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self, label: str) -> None:
        """Announce the next step (``label``: what starts now)."""
        self.done += 1
        count = f"[{self.done}/{self.total}] " if self.total else ""
        print(f"{count}{label} ({time.perf_counter() - self.start:.0f} s elapsed)", file=sys.stderr, flush=True)

    @staticmethod
    def note(text: str) -> None:
        """A one-off status line (loading a model, writing a file)."""
        print(text, file=sys.stderr, flush=True)
