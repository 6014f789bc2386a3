"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL (+MoE), Qwen3.5/3.6 (+MoE): native-resolution grids, 2x2 patch merging,
M-RoPE (text row + t/h/w rows)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from transformers.utils import ModelOutput

from vtr.adapters.base import Adapter, consecutive_positions
from vtr.adapters.qwen_pixels import qwen_pixel_maps
from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest, Reduction, VisionInfo
from vtr.pixels import PixelMap
from vtr.vision.attention import AttentionCapture, qwen_vit_attention

MM_TOKEN_TYPE = {"image": 1, "video": 2}
# Qwen3.5 / 3.6: q_proj yields each head's query and its output gate (and the text stack is hybrid)
GATED_QUERY_TYPES = ("qwen3_5", "qwen3_5_moe")


def qwen_vision_info(config) -> VisionInfo:
    """The Qwen ViT: no CLS token, the merger reads the last block."""
    depth = config.vision_config.depth
    return VisionInfo(depth=depth, feature_layer=depth - 1, has_cls=False, encoder="qwen")


class QwenVLAdapter(Adapter):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE (whose deepstack features are reduced like the main
    ones), and Qwen3.5 / 3.6 (dense and MoE): the same ViT without deepstack and a hybrid text stack of
    GatedDeltaNet and gated full-attention layers (``recurrent_layers``, ``gated_queries``)."""

    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    rope_rows = 3  # t/h/w (the text row of generate's 4-row position ids only builds the mask)
    demo_image_size = (64, 48)  # read at native resolution: a non-square image exercises its grid

    def with_features(
        self, modality: str, output: ModelOutput, features: list[Tensor], reductions: list[Reduction]
    ) -> ModelOutput:
        reduced = super().with_features(modality, output, features, reductions)
        deepstack = getattr(output, "deepstack_features", None)
        if deepstack is not None:  # per layer, per item: reduced exactly as the item's main features
            reduced.deepstack_features = [
                tuple(r.apply(f) for f, r in zip(layer, reductions)) for layer in deepstack
            ]
        return reduced

    def patch_decoder(self, pruner: Any) -> Callable[[], None]:
        """Qwen3-VL adds deepstack features to the visual tokens after its first decoder layers: once the
        in-LLM stage shortened the sequence, add them at the kept visual tokens only.

        A re-wrap installs its patch before the previous wrap's is undone (a failed wrap leaves the model as it
        was), so each patch wraps what was there before vtr (never another vtr patch) and its undo removes only
        itself.
        """
        decoder = self.decoder()
        if not hasattr(decoder, "_deepstack_process"):
            return lambda: None
        before = decoder.__dict__.get("_deepstack_process")
        if getattr(before, "vtr_patch", False):  # the wrap being replaced: wrap what it wrapped
            before = before.vtr_before
        original = before if before is not None else decoder._deepstack_process

        def deepstack_process(hidden_states: Tensor, visual_pos_masks: Tensor, visual_embeds: Tensor) -> Tensor:
            if pruner.run is None or hidden_states.shape[1] == visual_pos_masks.shape[-1]:
                return original(hidden_states, visual_pos_masks, visual_embeds)
            positions, rows = pruner.injection_rows(visual_pos_masks.to(hidden_states.device))
            return original(hidden_states, positions, visual_embeds[rows.to(visual_embeds.device)])

        deepstack_process.vtr_patch, deepstack_process.vtr_before = True, before
        decoder.__dict__["_deepstack_process"] = deepstack_process

        def undo() -> None:
            if decoder.__dict__.get("_deepstack_process") is not deepstack_process:
                return  # a later wrap replaced it (and restores what was there before vtr)
            if before is None:
                del decoder.__dict__["_deepstack_process"]
            else:
                decoder.__dict__["_deepstack_process"] = before

        return undo

    def gated_queries(self) -> bool:
        return self.config.model_type in GATED_QUERY_TYPES

    def vision_info(self) -> VisionInfo:
        return qwen_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.visual.blocks[layer].attn

    @contextlib.contextmanager
    def capture_attention(self, requests: dict[str, AttentionRequest]) -> Iterator[AttentionCapture]:
        """Also keep Qwen2.5-VL's window permutation: the encoder runs on window-ordered merge units."""
        visual = self.model.model.visual
        original = getattr(visual, "permute_input_for_window_attn", None)
        with super().capture_attention(requests) as capture:
            if original is None:
                yield capture
                return

            def permute(input_tensor: Tensor, window_index: Tensor, seq_len: int) -> Tensor:
                capture.window_index = window_index
                return original(input_tensor, window_index, seq_len)

            visual.__dict__["permute_input_for_window_attn"] = permute
            try:
                yield capture
            finally:
                visual.__dict__.pop("permute_input_for_window_attn", None)

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Scores per patch become scores per merged token: mean over each 2x2 merge unit (consecutive in the
        encoder's order), then the window permutation is undone, then split per item."""
        unit = int(self.config.vision_config.spatial_merge_size) ** 2
        sizes = [t * h * w // unit for t, h, w in inputs[f"{modality}_grid_thw"].tolist()]
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in sizes]
        for name, request in requests.items():
            hidden, kwargs = capture.hidden_states(request.layer)
            with torch.no_grad():
                attention = qwen_vit_attention(self.vision_attention_module(request.layer), hidden,
                                               kwargs["cu_seqlens"], kwargs["position_embeddings"], request.query)
            scores = torch.cat(attention.scores).view(-1, unit).mean(-1)
            keys = torch.cat(attention.keys).view(-1, unit, attention.keys[0].shape[-1]).mean(1)
            if capture.window_index is not None:
                order = torch.argsort(capture.window_index.to(scores.device))
                scores, keys = scores[order], keys[order]
            for item, item_scores, item_keys in zip(per_item, scores.split(sizes), keys.split(sizes)):
                item[name] = (item_scores, item_keys)
        return per_item

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        merge = int(self.config.vision_config.spatial_merge_size)
        thw = inputs[f"{modality}_grid_thw"].tolist()
        return [ItemLayout.grid_only((t, h // merge, w // merge), f.device) for (t, h, w), f in zip(thw, features)]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        key = "pixel_values" if modality == "image" else "pixel_values_videos"
        return qwen_pixel_maps(self.config.vision_config, modality, inputs[key], inputs[f"{modality}_grid_thw"],
                               layouts)

    def forward_positions(self, inputs: dict[str, Any]) -> Tensor:
        # The unwrapped forward computes the same t/h/w rows through get_rope_index; the text row is
        # only used to build the mask, and a consecutive one keeps transformers from guessing packing.
        return self.generate_positions(inputs)

    def rope_positions(self, positions: Tensor) -> Tensor:
        # (4, B, L) from generate, or t/h/w (3 rows) / 1-D (1 row) positions a caller passed
        return positions[1:] if positions.shape[0] == 4 else positions.expand(3, -1, -1)

    def finish_positions(self, gathered: Tensor, attention_mask: Tensor, compact: bool) -> Tensor:
        text_row = consecutive_positions(attention_mask)
        if compact:
            return text_row.expand(gathered.shape[0], -1, -1).contiguous()
        return torch.cat([text_row, self.rope_positions(gathered)], 0)

    def fill_missing_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """get_rope_index needs ``mm_token_type_ids`` (0 text, 1 image, 2 video); derive it if absent."""
        if inputs.get("mm_token_type_ids") is not None:
            return inputs
        ids = inputs["input_ids"]
        types = torch.zeros_like(ids)
        for modality, value in MM_TOKEN_TYPE.items():
            types[ids == self.placeholder_token_id(modality)] = value
        return {**inputs, "mm_token_type_ids": types}
