"""Timers for vtr's own code, switched on only while a benchmark records them.

``section(name)`` marks code on the hot path (the pre-LLM engine, the in-LLM hooks). Outside
``recording()`` it costs one global read; inside, it synchronises the device at both ends (so the time
is the work's, not the launch's) and adds the elapsed time to the recorder's total for ``name``.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable, Iterator

import torch

_active: "Recorder | None" = None


class Recorder:
    """Seconds spent per section name while recording."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)


class section:  # noqa: N801 - used like a function: ``with section("pre_llm"):``
    __slots__ = ("name", "start")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        if _active is not None:
            _active.sync()
            self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if _active is not None:
            _active.sync()
            _active.seconds[self.name] += time.perf_counter() - self.start


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def recording(sync: Callable[[], None]) -> Iterator[Recorder]:
    """Record every ``section`` entered inside the block."""
    global _active
    previous, _active = _active, Recorder(sync)
    try:
        yield _active
    finally:
        _active = previous
