"""Checkpoints shipped inside the package, loadable offline with ``from_pretrained``.

``tiny_llava_synth``: a ~1M-parameter LLaVA trained from scratch by ``scripts/train_tiny.py`` on the
train split of ``vtr.eval.synthetic``; the default model of ``vtr demo`` and ``vtr sweep``. Next to it,
``dymu_r{N}.json``: DyMU thresholds for N tokens merged per encoder layer, written by ``vtr calibrate`` on
synthetic train scenes (``scripts/calibrate_tiny.py``); pass one as ``thresholds=``.
"""

from __future__ import annotations

from pathlib import Path

NAME = "tiny-llava-synth"  # what `vtr demo --model` and the sweep's defaults call it
TINY_LLAVA_SYNTH = Path(__file__).resolve().parent / "tiny_llava_synth"
DYMU_FILE = "dymu_r{}.json"


def tiny_llava_synth() -> Path:
    """The shipped checkpoint's directory; a clear error when an install lost its files."""
    if not (TINY_LLAVA_SYNTH / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{TINY_LLAVA_SYNTH} holds no model.safetensors: reinstall vtr, or retrain it with "
            f"`python scripts/train_tiny.py --out {TINY_LLAVA_SYNTH}`")
    return TINY_LLAVA_SYNTH


def dymu_thresholds(target_removed: int) -> Path | None:
    """The shipped model's calibrated DyMU thresholds file for ``target_removed``, if one is shipped."""
    path = TINY_LLAVA_SYNTH / DYMU_FILE.format(target_removed)
    return path if path.is_file() else None


def shipped_dymu_levels() -> list[int]:
    """The ``target_removed`` levels with shipped thresholds, ascending."""
    prefix, suffix = DYMU_FILE.split("{}")
    return sorted(int(p.name[len(prefix):-len(suffix)]) for p in TINY_LLAVA_SYNTH.glob(DYMU_FILE.format("*")))
