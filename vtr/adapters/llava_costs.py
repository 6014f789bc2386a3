"""FLOPs of the LLaVA family's CLIP/SigLIP tower and projector (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x: the tower runs every layer, whatever
``vision_feature_layer`` selects; CLIP sequences carry a class token, SigLIP's none; SigLIP's
attention-pooling head runs when ``vision_use_head`` is set (OneVision discards its output). LLaVA-NeXT
and OneVision encode the base image and every AnyRes crop (``image_size_to_num_patches`` on
``image_sizes``; OneVision the base image only when ``batch_num_images`` says a row has several images);
videos encode every frame. The projector (two linears) sees every encoded token of every crop minus the
class token under the ``"default"`` feature strategy, before unpadding or pooling; LLaVA-NeXT-Video's
videos after its spatial pooler (whose conv counts as projector in ``"conv"`` mode). After a vision-stage
merge each encoder layer costs its recorded token count and the projector sees the merged tokens; an
AnyRes image's base and crops run as one batch padded to its longest sequence.
"""

from __future__ import annotations

import math
from typing import Any

from vtr.adapters.costs import FamilyCosts
from vtr.adapters.llava import llava_merge_target_shape, llava_protected, llava_vision_info
from vtr.costs.counting import VisualInput, block, linear, scores
from vtr.methods.base import AttentionRequest, VisionInfo
from vtr.methods.vision import EncoderGeometry

VIT_TOWERS = ("clip_vision_model", "siglip_vision_model")


class LlavaCosts(FamilyCosts):
    """LLaVA-1.5: one square image per encoder sequence."""

    model_types = ("llava",)

    def check(self) -> None:
        tower = self.config.vision_config.model_type
        if tower not in VIT_TOWERS:
            raise ValueError(f"no FLOPs model for a {tower!r} vision tower; supported: {', '.join(VIT_TOWERS)}")

    # ------------------------------------------------------------------ visual inputs
    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
        key = "pixel_values" if modality == "image" else "pixel_values_videos"
        pixels = inputs.get(key)
        if pixels is None:
            return []
        patch = self.config.vision_config.patch_size
        height, width = pixels.shape[-2] // patch, pixels.shape[-1] // patch
        if modality == "video":
            return [VisualInput("video", pixels.shape[1], height, width)] * pixels.shape[0]
        return [VisualInput("image", n, height, width) for n in self.crops(inputs, pixels.shape[0])]

    def crops(self, inputs: dict[str, Any], images: int) -> list[int]:
        """Encoder sequences of each image: one (no AnyRes)."""
        return [1] * images

    # ------------------------------------------------------------------ the tower
    def tokens_per_frame(self, item: VisualInput) -> int:
        """Tokens of one encoder sequence (CLIP adds a class token)."""
        return item.height * item.width + llava_protected(self.config)

    def patch_area(self) -> int:
        """Pixels per patch (the patch embedding's kernel)."""
        return self.config.vision_config.patch_size ** 2

    def vision_flops(self, item: VisualInput) -> float:
        """Patch embedding, encoder layers and SigLIP's pooling head, per frame."""
        vc = self.config.vision_config
        d = vc.hidden_size
        per_layer = item.encoder_tokens or (self.tokens_per_frame(item),) * vc.num_hidden_layers
        embed = linear(item.patches, vc.num_channels * self.patch_area(), d)
        layers = sum(block(n, d, d, d, 2 * scores(1, d, n, n), vc.intermediate_size, 2) for n in per_layer)
        seq, head = per_layer[-1], 0.0
        if item.encoder_tokens and llava_merge_target_shape(self.config)[0] == vc.num_hidden_layers:
            seq = item.projected + llava_merge_target_shape(self.config)[1]  # the last layer merged before the head
        if getattr(vc, "vision_use_head", False):  # one probe query attends to the sequence, then an MLP
            head = (2 * linear(1, d, d) + 2 * linear(seq, d, d) + 2 * scores(1, d, 1, seq)
                    + 2 * linear(1, d, vc.intermediate_size))
        return embed + item.frames * (layers + head)

    def projector_rows(self, item: VisualInput) -> int:
        """Rows per frame the projector sees: the encoder tokens minus the class token under "default"."""
        if item.projected is not None:
            return item.projected
        return self.tokens_per_frame(item) - (self.config.vision_feature_select_strategy == "default")

    def pooled(self, item: VisualInput, per_frame: int) -> tuple[int, float]:
        """(rows per frame after any pooling before the projector, the pooler's FLOPs): no pooling."""
        return per_frame, 0.0

    def projector_flops(self, item: VisualInput) -> float:
        vc, d_text = self.config.vision_config, self.config.get_text_config().hidden_size
        layers = self.config.vision_feature_layer
        d_in = vc.hidden_size * (1 if isinstance(layers, int) else len(layers))
        per_frame, pooler = self.pooled(item, self.projector_rows(item))
        rows = item.frames * per_frame
        return pooler + linear(rows, d_in, d_text) + linear(rows, d_text, d_text)

    # ------------------------------------------------------------------ methods' questions
    def vision_info(self) -> VisionInfo:
        return llava_vision_info(self.config)

    def attention_flops(self, request: AttentionRequest, item: VisualInput) -> float:
        vc = self.config.vision_config
        d, heads, seq = vc.hidden_size, vc.num_attention_heads, self.tokens_per_frame(item)
        queries = seq if request.query == "received" else 1
        return item.frames * (2 * linear(seq, d, d) + scores(heads, d // heads, queries, seq))

    def vision_head_dim(self) -> int:
        vc = self.config.vision_config
        return vc.hidden_size // vc.num_attention_heads

    def part_sizes(self, item: VisualInput, content: int, per_frame: bool) -> list[int]:
        """An AnyRes image: the base image's grid, then the crops grid."""
        if item.modality == "image" and item.frames > 1:
            base = self.projector_rows(item)
            return [base, content - base]
        return super().part_sizes(item, content, per_frame)

    def merge_geometry(self, tokens: int) -> EncoderGeometry:
        merge_layers, dropped = llava_merge_target_shape(self.config)
        return EncoderGeometry(tokens, tokens - dropped, merge_layers, self.config.vision_config.num_hidden_layers,
                               llava_protected(self.config))


class LlavaNextCosts(LlavaCosts):
    """LLaVA-NeXT: an image encodes its base image and every AnyRes crop."""

    model_types = ("llava_next",)

    def crops(self, inputs: dict[str, Any], images: int) -> list[int]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        sizes, whole = inputs["image_sizes"], self.with_crops(inputs)
        return [image_size_to_num_patches(size, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
                if crops else 1 for size, crops in zip(sizes, whole)]

    def with_crops(self, inputs: dict[str, Any]) -> list[bool]:
        """Which images the model encodes with their crops: all of them."""
        return [True] * len(inputs["image_sizes"])


class LlavaOneVisionCosts(LlavaNextCosts):
    """LLaVA-OneVision: crops only for a row's single image (``batch_num_images``)."""

    model_types = ("llava_onevision",)

    def with_crops(self, inputs: dict[str, Any]) -> list[bool]:
        counts = inputs.get("batch_num_images")
        if counts is None:
            return super().with_crops(inputs)
        return [n == 1 for n in counts.tolist() for _ in range(n)]


class LlavaNextVideoCosts(LlavaNextCosts):
    """LLaVA-NeXT-Video: videos pass the spatial pooler before the projector."""

    model_types = ("llava_next_video",)

    def pooled(self, item: VisualInput, per_frame: int) -> tuple[int, float]:
        if item.modality != "video":
            return per_frame, 0.0
        config, vc = self.config, self.config.vision_config
        stride = config.spatial_pool_stride
        side = math.isqrt(per_frame) // stride
        pooler = 0.0
        if config.spatial_pool_mode == "conv":
            out_channels = getattr(config, "spatial_pool_out_channels", vc.hidden_size)
            pooler = linear(item.frames * side * side, vc.hidden_size * stride ** 2, out_channels)
        return side * side, pooler
