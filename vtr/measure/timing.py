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


ENCODER_SECTION = "encode"
"""The section that runs the model's own vision encoder inside vtr's pre-LLM section: not vtr's code."""


class Recorder:
    """Seconds spent per section name while recording.

    With ``sync_check`` (CUDA), every section but the model's encoder runs under
    ``torch.cuda.set_sync_debug_mode("error")``, so a host↔device sync in vtr's own code raises.
    """

    def __init__(self, sync: Callable[[], None], sync_check: bool = False) -> None:
        self.sync = sync
        self.sync_check = sync_check
        self.seconds: dict[str, float] = defaultdict(float)

    @property
    def vtr_ms(self) -> float:
        """Milliseconds in vtr's own code: the pre-LLM engine minus the model's encoder, plus the in-LLM hooks."""
        return (self.seconds["pre_llm"] - self.seconds[ENCODER_SECTION] + self.seconds["in_llm"]) * 1e3


class section:  # noqa: N801 - used like a function: ``with section("pre_llm"):``
    __slots__ = ("name", "start", "outer_sync_mode")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        if _active is not None:
            _active.sync()
            if _active.sync_check:
                self.outer_sync_mode = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode(0 if self.name == ENCODER_SECTION else "error")
            self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if _active is not None:
            if _active.sync_check:
                torch.cuda.set_sync_debug_mode(self.outer_sync_mode)
            _active.sync()
            _active.seconds[self.name] += time.perf_counter() - self.start


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def recording(sync: Callable[[], None], sync_check: bool = False) -> Iterator[Recorder]:
    """Record every ``section`` entered inside the block (see ``Recorder`` for ``sync_check``)."""
    global _active
    previous, _active = _active, Recorder(sync, sync_check)
    try:
        yield _active
    finally:
        _active = previous
