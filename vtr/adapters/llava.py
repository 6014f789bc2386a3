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

from torch import Tensor, nn

from vtr.adapters import llava_video_attention
from vtr.adapters.base import Adapter
from vtr.adapters.llava_attention import anyres_image_attention, encoder_attention, recording_packing, with_crops
from vtr.adapters.llava_merging import anyres_merges, spreading_projector
from vtr.adapters.llava_pixels import anyres_image_maps, square_image_maps, video_maps
from vtr.errors import ReductionError
from vtr.layout import ItemLayout, layout_with_newlines, square_grid
from vtr.methods.base import AttentionRequest, Reduction, VisionInfo
from vtr.pixels import PixelMap
from vtr.vision.attention import AttentionCapture
from vtr.vision.merging import EncoderMerging, MergeTarget


def llava_vision_info(config) -> VisionInfo:
    """The CLIP or SigLIP tower of a LLaVA model: its depth, the layer whose output becomes the features,
    and whether it has a class token (CLIP does, SigLIP does not)."""
    depth, layer = config.vision_config.num_hidden_layers, config.vision_feature_layer
    if not isinstance(layer, int):
        raise ReductionError(f"vision attention needs one feature layer; this model concatenates layers {layer}")
    # hidden_states[f] is the output of encoder layer f - 1 (index 0 holds the embeddings)
    return VisionInfo(depth=depth, feature_layer=layer + depth if layer < 0 else layer - 1,
                      has_cls=config.vision_config.model_type == "clip_vision_model", encoder="clip")


def llava_merge_target_shape(config) -> tuple[int, int]:
    """(merging layers, tokens dropped before the projector) of a LLaVA CLIP/SigLIP tower: merges follow every
    layer up to the feature layer; the "default" strategy drops the class token."""
    if config.vision_config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ReductionError(f"vision-encoder merging needs a CLIP or SigLIP tower, this {config.model_type} model "
                             f"has a {config.vision_config.model_type!r} tower")
    if not isinstance(config.vision_feature_layer, int):
        raise ReductionError(f"vision-encoder merging needs one feature layer; this model concatenates layers "
                             f"{config.vision_feature_layer}, whose merged sequences would differ in length")
    dropped = 1 if config.vision_feature_select_strategy == "default" else 0
    return llava_vision_info(config).feature_layer + 1, dropped


def llava_protected(config) -> int:
    """Leading encoder tokens that never merge: CLIP's class token; SigLIP has none."""
    return int(config.vision_config.model_type == "clip_vision_model")


def llava_merge_target(model: nn.Module) -> MergeTarget:
    merge_layers, dropped = llava_merge_target_shape(model.config)
    tower = model.model.vision_tower
    if str(tower.config._attn_implementation).startswith("flash"):
        raise ReductionError("vision-encoder merging passes proportional attention as an additive float mask, "
                             "which flash attention cannot take; load the vision tower with sdpa or eager")
    return MergeTarget(tower.encoder.layers, merge_layers, dropped, tower, llava_protected(model.config))


def _dropped_cls(config) -> int:
    """Leading encoder tokens that are not features: the class token under the "default" strategy."""
    return 1 if config.vision_feature_select_strategy == "default" else 0


class _LlavaTowerAdapter(Adapter):
    """What every LLaVA-family adapter knows of its CLIP/SigLIP tower."""

    def merge_target(self) -> MergeTarget:
        return llava_merge_target(self.model)

    def vision_info(self) -> VisionInfo:
        return llava_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn


class LlavaAdapter(_LlavaTowerAdapter):
    model_types = ("llava",)
    modalities_handled = ("image",)

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        return [ItemLayout.grid_only(square_grid(f.shape[0]), f.device) for f in features]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        return square_image_maps(inputs["pixel_values"], layouts, int(self.config.vision_config.patch_size))

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in range(inputs["pixel_values"].shape[0])]
        for name, request in requests.items():  # one encoder sequence per image
            scores, keys = encoder_attention(self.vision_attention_module, capture, request, _dropped_cls(self.config))
            for item, item_scores, item_keys in zip(per_item, scores, keys):
                item[name] = (item_scores, item_keys)
        return per_item


class LlavaNextAdapter(_LlavaTowerAdapter):
    model_types = ("llava_next", "llava_onevision", "llava_next_video")

    def encode(self, modality: str, inputs: dict[str, Any]):
        """Also record how the model packed the images (``vtr.adapters.llava_attention``)."""
        if modality != "image":
            return super().encode(modality, inputs)
        with recording_packing(self.model.base_model) as packing:
            output = super().encode(modality, inputs)
        self._image_packing = packing  # read by item_layouts / item_attention of this same encode
        return output

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        layouts = self.coarse_item_layouts(modality, inputs, features)
        device = self.model.model.image_newline.device
        return with_crops(layouts, self._image_packing, device) if modality == "image" else layouts

    def coarse_item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        """The layouts without crop boxes (finding them replays the packing: ~75 ops per call)."""
        newline = self.model.model.image_newline
        frames = inputs["pixel_values_videos"].shape[1] if modality == "video" else 1
        return [layout_with_newlines((f == newline.to(f.device, f.dtype)).all(-1), frames) for f in features]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        if modality == "video":
            return video_maps(inputs["pixel_values_videos"], layouts)
        return anyres_image_maps(self.model, inputs["pixel_values"], layouts, self._image_packing)

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        if modality == "image":
            return anyres_image_attention(self.vision_attention_module, capture, requests, self._image_packing,
                                          _dropped_cls(self.config))
        return llava_video_attention.video_attention(self.model, self.vision_attention_module, capture, requests,
                                                     inputs, _dropped_cls(self.config))

    # vision-encoder merging of AnyRes images: vtr.adapters.llava_merging
    def merging_encode(self, modality: str, merging: EncoderMerging):
        if modality != "image":
            raise ReductionError(f"vision-encoder merging (tome, dymu) runs on the images of {self.config.model_type} "
                                 f"models, not on their videos (the model pools each frame's patch grid after the "
                                 f"encoder); use a pre-LLM method for videos")
        return spreading_projector(self.model.model.multi_modal_projector, merging)

    def spread_merged(self, modality: str, merging: EncoderMerging, features: list[Tensor]) -> list[Tensor]:
        return features  # spread after the projector, before packing

    def item_merges(self, modality: str, merging: EncoderMerging, features: list[Tensor],
                    layouts: list[ItemLayout]) -> list[tuple[Reduction, tuple[int, ...], int]]:
        return anyres_merges(self._image_packing, merging, features, layouts)
