"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one square grid of patch tokens per image, 1-D RoPE."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from vtr.adapters.base import Adapter


def square_grid(n_tokens: int) -> tuple[int, int, int]:
    """(1, s, s) for a square patch grid; a non-square count is treated as one row of tokens."""
    side = math.isqrt(n_tokens)
    return (1, side, side) if side * side == n_tokens else (1, 1, n_tokens)


class LlavaAdapter(Adapter):
    model_types = ("llava",)

    def item_grids(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[tuple[int, int, int]]:
        return [square_grid(f.shape[0]) for f in features]
