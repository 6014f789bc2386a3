"""The picture a sweep shows per config: what the reduction kept of the run's first sample (``vtr.show``).

This module is light (the sweep reads its names without importing torch). The sweep names the file in the environment of the lmms-eval run (``PICTURE_ENV``); the vtr model class
draws its first reduced request there, on rank 0, from the inputs and ``vtr.stats`` of that very call.
A picture is an illustration, not a score: when it cannot be drawn (no matplotlib, a family without a
pixel map) the run goes on and its log says why; the summary then lists the config without a picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PICTURE_ENV = "VTR_SWEEP_PICTURE"
PICTURES_DIR = "pictures"  # next to summary.md


class FirstSamplePicture:
    """Draws the first request it sees to ``$VTR_SWEEP_PICTURE`` (nothing when unset or off rank 0)."""

    def __init__(self) -> None:
        path = os.environ.get(PICTURE_ENV)
        self.path = Path(path) if path and int(os.environ.get("RANK", "0")) == 0 else None

    def draw(self, model: torch.nn.Module, processor: Any, inputs: dict[str, Any], answer: str | None) -> None:
        if self.path is None:
            return
        path, self.path = self.path, None  # the first request only, drawn or not
        from loguru import logger as eval_logger

        from vtr.show import show_call

        try:
            figure = show_call(model, processor, inputs, answers=None if answer is None else [answer])
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
        except (ImportError, ValueError, RuntimeError) as error:
            eval_logger.warning(f"vtr: no picture of the first sample ({type(error).__name__}: {error})")
            return
        eval_logger.info(f"vtr: picture of the first sample: {path}")
