"""Gemma 3 (``gemma3``): a SigLIP tower, its patch grid average-pooled into ``mm_tokens_per_image`` LLM tokens.

What the family does, read from transformers' ``modeling_gemma3``:

* every image (and, with pan-and-scan, every crop: the processor gives each crop its own
  ``<start_of_image>`` ... ``<end_of_image>`` sequence) is one SigLIP sequence at the tower's size; the
  projector pools the (P, P) patch grid with a (P/s)x(P/s) average (4x4 on the published models: 64x64
  patches into 16x16 = 256 tokens), so each image is one square (s, s) grid, and each crop is its own item;
* image tokens attend to each other bidirectionally, inside runs of ``token_type_ids == 1``; the engine
  shrinks ``token_type_ids`` with the prompt, so the kept tokens of one image still form one run and keep
  attending to each other (a prune before the LLM is exactly the model run on the shortened prompt);
* the text model interleaves sliding-window layers with global ones (``vtr.adapters.base.sliding_windows``).

Vision attention (hiprune, visionzip): the tower's own attention module recomputed at the requested layer,
then pooled by the projector's own ``avg_pool``, as the features were: an LLM token's score and key are the
means over the patches it was pooled from. Vision-encoder merging (tome, dymu) is refused: a token merged
across pooling windows has no place in the pooled grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vtr.adapters.base import Adapter, last_layer_vision_info
from vtr.adapters.llava_attention import encoder_attention
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest, VisionInfo
from vtr.pixels import Panel, PixelMap, grid_boxes
from vtr.vision.attention import AttentionCapture
from vtr.vision.merging import MergeTarget


def tokens_side(config) -> int:
    """LLM tokens per image side after the pool (16 on the published models)."""
    return math.isqrt(int(config.mm_tokens_per_image))


def patches_side(config) -> int:
    """SigLIP patches per image side (64 at 896 pixels and 14-pixel patches)."""
    return int(config.vision_config.image_size) // int(config.vision_config.patch_size)


class Gemma3Adapter(Adapter):
    model_types = ("gemma3",)
    modalities_handled = ("image",)
    rotary_per_layer_type = True

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        side = tokens_side(self.config)
        return [ItemLayout.grid_only((1, side, side), f.device) for f in features]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        """Each image (or crop) is resized to the tower's square; a token covers its pooling window there."""
        side = tokens_side(self.config)
        return [PixelMap((Panel("image", image),), grid_boxes((1, side, side), image.shape[-2], image.shape[-1]))
                for image, _ in zip(inputs["pixel_values"], layouts)]

    # ------------------------------------------------------------------ vision attention
    def vision_info(self) -> VisionInfo:
        return last_layer_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per image, scores and mean keys of its patches pooled by the projector's own ``avg_pool``."""
        pool = self.model.model.multi_modal_projector.avg_pool
        side = patches_side(self.config)
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in range(inputs["pixel_values"].shape[0])]
        for name, request in requests.items():
            scores, keys = encoder_attention(self.vision_attention_module, capture, request, drop_cls=0)
            values = torch.cat([scores.unsqueeze(-1), keys], -1)
            images, _, channels = values.shape
            grid = values.transpose(1, 2).reshape(images, channels, side, side)
            pooled = pool(grid).flatten(2).transpose(1, 2)  # (images, tokens, 1 + d)
            for item, image in zip(per_item, pooled):
                item[name] = (image[:, 0], image[:, 1:])
        return per_item

    def merge_target(self) -> MergeTarget:
        raise ReductionError(
            f"vision-encoder merging (tome, dymu) does not run on {self.config.model_type}: the projector "
            f"average-pools fixed windows of SigLIP patches into each LLM token, so a token merged across windows "
            f"has no place in the pooled grid; use a pre-LLM method (divprune, visionzip, hiprune, pool, ...) there")
