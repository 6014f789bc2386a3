"""FLOPs of Gemma 4's vision tower, projector and decoder (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x:

* every image (and every sampled video frame) is one tower sequence of the processor's patch budget
  (``pixel_values``' second axis, padding patches included: they run through every layer under a padding
  mask, which does not shrink the count); the patch embedding is one linear over the flattened patches; each
  layer is attention (q/k/v/o, the scores of every head) and a gated MLP; the pooler averages k x k windows
  with one (tokens x patches) matmul per image, tokens = patches / k^2;
* the projector (``embed_vision``) is one linear on the image's valid pooled tokens;
* the decoder layers differ by kind: global layers have their own head width and key/value heads
  (``per_layer_config``), keys doubling as values (``attention_k_eq_v``) save the v projection, KV-shared
  layers project no keys or values and, in a generate prefill, run only the last token (transformers
  slices them to the logits kept); each layer adds its per-layer input branch (a gate into
  ``hidden_size_per_layer_input`` and a projection back) and, where enabled, a mixture of experts next to
  the dense MLP (twice as wide on KV-shared layers with ``use_double_wide_mlp``); the per-layer input
  embedding's projection of the prompt (hidden -> layers x per-layer width) is booked on layer 0, which
  sees every prompt token.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vtr.adapters.costs import FamilyCosts
from vtr.adapters.base import last_layer_vision_info
from vtr.adapters.gemma4 import pooled_widths, tower_sequences
from vtr.costs.counting import VisualInput, linear, scores
from vtr.costs.decoder import (Attention, Branches, Decoder, DecoderLayer, DenseMLP, FeedForward, MixtureOfExperts,
                               WidthProjection)
from vtr.methods.base import AttentionRequest, VisionInfo


class Gemma4Costs(FamilyCosts):
    """Gemma 4: one padded tower sequence per image, pooled k x k, one projection; a heterogeneous decoder."""

    model_types = ("gemma4",)

    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
        """Each image (or video: its frames, all of one size) as its valid patch grid (rows x columns);
        ``encoder_tokens``: the padded sequence every tower layer runs, per image or frame."""
        sequences = tower_sequences(modality, inputs)
        if sequences is None:
            return []
        pixels, positions, frames = sequences
        firsts = [sum(frames[:i]) for i in range(len(frames))]
        kernel = int(self.config.vision_config.pooling_kernel_size)
        valid = (positions != -1).all(-1).sum(1).tolist()
        widths = pooled_widths(self.config, positions)
        depth = self.config.vision_config.num_hidden_layers
        return [VisualInput(modality, n, valid[first] // (widths[first] * kernel), widths[first] * kernel,
                            encoder_tokens=(pixels.shape[1],) * depth) for n, first in zip(frames, firsts)]

    def placeholder_units(self, items: list[VisualInput], hits: Tensor) -> tuple[list[int], list[int]]:
        """A video's frames are runs of their own, each after its timestamp."""
        _, per_row = super().placeholder_units(items, hits)
        return [item.frames for item in items], per_row

    def vision_flops(self, item: VisualInput) -> float:
        vc = self.config.vision_config
        n, d = item.encoder_tokens[0], vc.hidden_size
        heads, kv_heads, head_dim = vc.num_attention_heads, vc.num_key_value_heads, vc.head_dim
        layer = (linear(n, d, heads * head_dim) + 2 * linear(n, d, kv_heads * head_dim)
                 + linear(n, heads * head_dim, d) + 2 * scores(heads, head_dim, n, n)
                 + 3 * linear(n, d, vc.intermediate_size))
        embed = linear(n, 3 * vc.patch_size ** 2, d)
        pool = linear(n // vc.pooling_kernel_size ** 2, n, d)
        return item.frames * (embed + vc.num_hidden_layers * layer + pool)

    def projector_rows(self, item: VisualInput) -> int:
        return item.patches // self.config.vision_config.pooling_kernel_size ** 2

    def projector_flops(self, item: VisualInput) -> float:
        vc = self.config.vision_config
        width = getattr(vc, "output_proj_dims", None) or vc.hidden_size
        return linear(self.projector_rows(item), width, self.config.get_text_config().hidden_size)

    def vision_info(self) -> VisionInfo:
        return last_layer_vision_info(self.config)

    def attention_flops(self, request: AttentionRequest, item: VisualInput) -> float:
        """The recomputed q and k projections and every query row's logits (``gemma4_vit_attention``), per
        image or frame."""
        vc = self.config.vision_config
        n, d = item.encoder_tokens[0], vc.hidden_size
        return item.frames * (linear(n, d, vc.num_attention_heads * vc.head_dim)
                              + linear(n, d, vc.num_key_value_heads * vc.head_dim)
                              + scores(vc.num_attention_heads, vc.head_dim, n, n))

    def vision_head_dim(self) -> int:
        return int(self.config.vision_config.head_dim)

    def decoder(self) -> Decoder:
        text = self.config.get_text_config()
        modes = text.kv_sharing_modes
        layers = tuple(DecoderLayer(self._attention(text, i, kind, modes[i] == "reuse"),
                                    self._feed_forward(text, i, modes[i] == "reuse"))
                       for i, kind in enumerate(text.layer_types))
        shared = frozenset(i for i, mode in enumerate(modes) if mode == "reuse")
        return Decoder(text.hidden_size, text.vocab_size, layers, last_token_layers=shared)

    @staticmethod
    def _attention(text, index: int, kind: str, shared: bool) -> Attention:
        layer = text.per_layer_config[index]
        sliding = kind == "sliding_attention"
        kv_projections = 0 if shared else 1 if text.attention_k_eq_v and not sliding else 2
        return Attention(text.num_attention_heads, layer.num_key_value_heads, layer.head_dim,
                         text.sliding_window if sliding else None, kv_projections=kv_projections)

    @staticmethod
    def _feed_forward(text, index: int, shared: bool) -> FeedForward:
        wide = 2 if text.use_double_wide_mlp and shared else 1
        parts: list[FeedForward] = [DenseMLP(text.intermediate_size * wide)]
        if text.enable_moe_block:
            parts.append(MixtureOfExperts(text.num_experts, text.top_k_experts, text.moe_intermediate_size))
        if per_layer := text.hidden_size_per_layer_input:
            parts.append(WidthProjection(per_layer))
            if index == 0:
                parts.append(WidthProjection(text.num_hidden_layers * per_layer, mats=1))
        return Branches(tuple(parts))
