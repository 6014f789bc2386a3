"""FLOPs of Gemma 3's SigLIP tower and projector (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x: every image (and every pan-and-scan crop, its own
``pixel_values`` row) is one SigLIP sequence of its patches, no class token, through every layer, without
the attention-pooling head; the projector average-pools the patch grid (no matmul), RMS-normalises it (no
matmul) and multiplies the ``mm_tokens_per_image`` pooled rows by one (vision, text) matrix. The decoder's
sliding-window layers cost as ``vtr.costs.decoder`` says (a full prefill; decode steps capped at the window);
the bidirectional image block changes which scores are masked, not how many are computed.
"""

from __future__ import annotations

from typing import Any

from vtr.adapters.base import last_layer_vision_info
from vtr.adapters.llava_costs import LlavaCosts
from vtr.costs.counting import VisualInput, linear
from vtr.methods.base import VisionInfo


class Gemma3Costs(LlavaCosts):
    """Gemma 3: one square SigLIP sequence per image or crop, pooled before one projection."""

    model_types = ("gemma3",)

    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
        pixels = inputs.get("pixel_values")
        if modality != "image" or pixels is None:
            return []
        patch = self.config.vision_config.patch_size
        return [VisualInput("image", 1, pixels.shape[-2] // patch, pixels.shape[-1] // patch)] * pixels.shape[0]

    def projector_rows(self, item: VisualInput) -> int:
        return int(self.config.mm_tokens_per_image)

    def projector_flops(self, item: VisualInput) -> float:
        d_vision, d_text = self.config.vision_config.hidden_size, self.config.get_text_config().hidden_size
        return item.frames * linear(self.projector_rows(item), d_vision, d_text)

    def vision_info(self) -> VisionInfo:
        return last_layer_vision_info(self.config)
