"""The LLaVA family with 1-D RoPE.

``llava`` (LLaVA-1.5): one square grid of patch tokens per image. ``llava_next``, ``llava_onevision``
(also LLaVA-Video checkpoints) and ``llava_next_video``: AnyRes images packed as the base image's grid
followed by the unpadded crops grid with an ``image_newline`` token closing each row; videos as
(frames, h, w) grids after the model's own pooling, OneVision with one newline closing the video.
The layout is read off the packed features themselves (newline rows equal the model's
``image_newline`` vector exactly), so it follows whatever packing the installed transformers does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from vtr.adapters import llava_video_attention
from vtr.adapters.base import Adapter
from vtr.errors import ReductionError
from vtr.layout import ItemLayout, layout_with_newlines, square_grid
from vtr.methods.base import VisionInfo
from vtr.vision.attention import AttentionCapture, AttentionRequest, clip_like_attention
from vtr.vision.merging import MergeTarget


def llava_vision_info(config) -> VisionInfo:
    """The CLIP tower of LLaVA-1.5: its depth, and the layer whose output becomes the features."""
    depth, layer = config.vision_config.num_hidden_layers, config.vision_feature_layer
    if not isinstance(layer, int):
        raise ReductionError(f"vision attention needs one feature layer; this model concatenates layers {layer}")
    # hidden_states[f] is the output of encoder layer f - 1 (index 0 holds the embeddings)
    return VisionInfo(depth=depth, feature_layer=layer + depth if layer < 0 else layer - 1, has_cls=True,
                      encoder="clip")


def llava_merge_target_shape(config) -> tuple[int, int]:
    """(merging layers, tokens dropped before the projector) of a LLaVA-1.5 CLIP tower: merges follow every
    layer up to the feature layer; the "default" strategy drops the class token."""
    if config.vision_config.model_type != "clip_vision_model":
        raise ReductionError(f"vision-encoder merging needs a CLIP tower (it protects the class token), this llava "
                             f"model has a {config.vision_config.model_type!r} tower")
    if not isinstance(config.vision_feature_layer, int):
        raise ReductionError(f"vision-encoder merging needs one feature layer; this model concatenates layers "
                             f"{config.vision_feature_layer}, whose merged sequences would differ in length")
    dropped = 1 if config.vision_feature_select_strategy == "default" else 0
    return llava_vision_info(config).feature_layer + 1, dropped


class LlavaAdapter(Adapter):
    model_types = ("llava",)
    modalities_handled = ("image",)

    def merge_target(self) -> MergeTarget:
        merge_layers, dropped = llava_merge_target_shape(self.config)
        tower = self.model.model.vision_tower
        if str(tower.config._attn_implementation).startswith("flash"):
            raise ReductionError("vision-encoder merging passes proportional attention as an additive float mask, "
                                 "which flash attention cannot take; load the vision tower with sdpa or eager")
        return MergeTarget(tower.encoder.layers, merge_layers, dropped)

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

    # vision attention of videos (HoliTom): vtr.adapters.llava_video_attention
    def vision_info(self) -> VisionInfo:
        return dataclasses.replace(llava_vision_info(self.config),
                                   has_cls=self.config.vision_config.model_type == "clip_vision_model")

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        if modality == "video":
            return llava_video_attention.video_attention(self, capture, requests, inputs)
        raise ReductionError(
            f"vtr cannot yet map vision-encoder attention to the LLM tokens of {self.config.model_type} images "
            f"(AnyRes crops); methods that need it (hiprune, visionzip, holitom) run on its videos, on llava, "
            f"qwen2_vl, qwen2_5_vl and qwen3_vl"
        )
