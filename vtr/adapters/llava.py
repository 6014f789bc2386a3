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

import torch
from torch import Tensor, nn

from vtr.adapters.base import Adapter
from vtr.errors import ReductionError
from vtr.layout import ItemLayout, layout_with_newlines, square_grid
from vtr.methods.base import VisionInfo
from vtr.vision.attention import AttentionCapture, AttentionRequest, clip_like_attention


def llava_vision_info(config) -> VisionInfo:
    """The CLIP tower of LLaVA-1.5: its depth, and the layer whose output becomes the features."""
    depth, layer = config.vision_config.num_hidden_layers, config.vision_feature_layer
    if not isinstance(layer, int):
        raise ReductionError(f"vision attention needs one feature layer; this model concatenates layers {layer}")
    # hidden_states[f] is the output of encoder layer f - 1 (index 0 holds the embeddings)
    return VisionInfo(depth=depth, feature_layer=layer + depth if layer < 0 else layer - 1, has_cls=True,
                      encoder="clip")


class LlavaAdapter(Adapter):
    model_types = ("llava",)
    modalities_handled = ("image",)

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        return [ItemLayout.grid_only(square_grid(f.shape[0]), f.device) for f in features]

    def vision_info(self) -> VisionInfo:
        return llava_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        drop_cls = 1 if self.config.vision_feature_select_strategy == "default" else 0
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in range(inputs["pixel_values"].shape[0])]
        for name, request in requests.items():
            args, kwargs = capture.inputs[request.layer]
            hidden = args[0] if args else kwargs["hidden_states"]
            with torch.no_grad():
                attention = clip_like_attention(self.vision_attention_module(request.layer), hidden, request.query)
            for item, scores, keys in zip(per_item, attention.scores, attention.keys):
                item[name] = (scores[drop_cls:], keys[drop_cls:])
        return per_item


class LlavaNextAdapter(Adapter):
    model_types = ("llava_next", "llava_onevision", "llava_next_video")

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        newline = self.model.model.image_newline
        frames = inputs["pixel_values_videos"].shape[1] if modality == "video" else 1
        return [layout_with_newlines((f == newline.to(f.device, f.dtype)).all(-1), frames) for f in features]
