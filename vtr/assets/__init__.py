"""Checkpoints shipped inside the package, loadable offline with ``from_pretrained``.

``tiny_llava_synth``: a ~1M-parameter LLaVA trained from scratch by ``scripts/train_tiny.py`` on the
train split of ``vtr.eval.synthetic``; the default model of ``vtr demo`` and ``vtr sweep``.
"""

from __future__ import annotations

from pathlib import Path

NAME = "tiny-llava-synth"  # what `vtr demo --model` and the sweep's defaults call it
TINY_LLAVA_SYNTH = Path(__file__).resolve().parent / "tiny_llava_synth"


def tiny_llava_synth() -> Path:
    """The shipped checkpoint's directory; a clear error when an install lost its files."""
    if not (TINY_LLAVA_SYNTH / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{TINY_LLAVA_SYNTH} holds no model.safetensors: reinstall vtr, or retrain it with "
            f"`python scripts/train_tiny.py --out {TINY_LLAVA_SYNTH}`")
    return TINY_LLAVA_SYNTH
