"""The LLaVA family with 1-D RoPE.

``llava`` (LLaVA-1.5): one square grid of patch tokens per image. ``llava_next``, ``llava_onevision``
(also LLaVA-Video checkpoints) and ``llava_next_video``: AnyRes images packed as the base image's grid
followed by the unpadded crops grid with an ``image_newline`` token closing each row; videos as
(frames, h, w) grids after the model's own pooling, OneVision with one newline closing the video.
The layout is read off the packed features themselves (newline rows equal the model's
``image_newline`` vector exactly), so it follows whatever packing the installed transformers does.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vtr.adapters.base import Adapter
from vtr.layout import ItemLayout, layout_with_newlines, square_grid


class LlavaAdapter(Adapter):
    model_types = ("llava",)
    modalities_handled = ("image",)

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        return [ItemLayout.grid_only(square_grid(f.shape[0]), f.device) for f in features]


class LlavaNextAdapter(Adapter):
    model_types = ("llava_next", "llava_onevision", "llava_next_video")

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        newline = self.model.model.image_newline
        frames = inputs["pixel_values_videos"].shape[1] if modality == "video" else 1
        return [layout_with_newlines((f == newline.to(f.device, f.dtype)).all(-1), frames) for f in features]
