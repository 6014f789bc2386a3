"""FLOPs of InternVL's InternViT and projector (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x: every tile (crop, thumbnail or video frame) is one
InternViT sequence of its patches plus a class token, through every layer (a CLIP-like block: q, k, v and
output projections, a two-matmul MLP; q/k norms and layer scales cost no matmul); the pixel shuffle only
moves values; the projector (two linears after a layer norm) sees each tile's shuffled tokens, each
``(1 / downsample_ratio)^2`` patches wide. Tiles per image come off the prompt's placeholder runs.
"""

from __future__ import annotations

from typing import Any

from vtr.adapters.internvl import image_runs, internvl_vision_info, shuffle_group, tokens_per_tile
from vtr.adapters.llava_costs import LlavaCosts
from vtr.costs.counting import VisualInput, linear
from vtr.methods.base import VisionInfo


class InternVLCosts(LlavaCosts):
    """InternVL: its tower costs like CLIP's (class token, same block), tiles are the encoder sequences."""

    model_types = ("internvl",)

    def check(self) -> None:
        """Every InternViT configuration is costed."""

    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
        pixels = inputs.get("pixel_values")
        if modality != "image" or pixels is None:  # video frames are images here
            return []
        side = self.config.vision_config.image_size[0] // self.config.vision_config.patch_size[0]
        per_tile = tokens_per_tile(self.config)
        return [VisualInput("image", run // per_tile, side, side)
                for run in image_runs(inputs["input_ids"], self.config.image_token_id)]

    def patch_area(self) -> int:
        height, width = self.config.vision_config.patch_size
        return height * width

    def tokens_per_frame(self, item: VisualInput) -> int:
        return item.height * item.width + 1  # the class token

    def projector_rows(self, item: VisualInput) -> int:
        """Tokens per tile after the pixel shuffle (the thumbnail's grid, for ``part_sizes``)."""
        return tokens_per_tile(self.config)

    def projector_flops(self, item: VisualInput) -> float:
        d_in = self.config.vision_config.hidden_size * shuffle_group(self.config) ** 2
        d_text = self.config.get_text_config().hidden_size
        rows = item.frames * self.projector_rows(item)
        return linear(rows, d_in, d_text) + linear(rows, d_text, d_text)

    def vision_info(self) -> VisionInfo:
        return internvl_vision_info(self.config)
