"""FLOPs of the Qwen-VL ViT and patch mergers (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x: vision attention runs per frame (temporal patch);
Qwen2.5-VL's windowed blocks per window of ``window_size`` pixels (``fullatt_block_indexes`` per frame).
Qwen2-VL and Qwen3-VL vision MLPs have two matmuls, Qwen2.5-VL's three (gated). The patch merger (two
linears on ``merge**2`` patches) counts as projector, once more per Qwen3-VL deepstack layer.

Qwen3.5 / 3.6 decoders: gated full attention (q_proj twice as wide) and GatedDeltaNet layers
(``GatedDeltaNet``), counted as transformers' torch reference runs them; MoE layers as ``vtr.costs.decoder``
counts them (router, active experts, shared expert).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vtr.adapters.costs import FamilyCosts
from vtr.adapters.qwen_vl import qwen_vision_info
from vtr.costs.counting import VisualInput, block, linear, scores
from vtr.costs.decoder import Decoder, attention_from_config, decoder_from_config
from vtr.methods.base import AttentionRequest, VisionInfo


class QwenVLCosts(FamilyCosts):
    """Qwen3-VL (and what the other Qwen-VL generations share): full attention in every block, a
    two-matmul MLP, deepstack mergers."""

    model_types = ("qwen3_vl", "qwen3_vl_moe")

    # ------------------------------------------------------------------ visual inputs
    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
        grid = inputs.get(f"{modality}_grid_thw")
        return [] if grid is None else [VisualInput(modality, *map(int, thw)) for thw in grid.tolist()]

    def placeholder_units(self, items: list[VisualInput], hits: Tensor) -> tuple[list[int], list[int]]:
        """An item takes its merged-patch count of placeholders."""
        merge = self.config.vision_config.spatial_merge_size
        return [item.patches // merge ** 2 for item in items], hits.sum(1).tolist()

    # ------------------------------------------------------------------ the ViT
    @property
    def width(self) -> int:
        return self.config.vision_config.hidden_size

    @property
    def merged_width(self) -> int:
        """Output width of the patch merger."""
        return self.config.vision_config.out_hidden_size

    def mlp(self) -> tuple[int, int]:
        """(width, matmuls) of a block's MLP."""
        return self.config.vision_config.intermediate_size, 2

    def windowed(self, layer: int) -> bool:
        """Whether block ``layer`` attends within windows (else within each frame)."""
        return False

    def window_sizes(self, height: int, width: int) -> list[int]:  # pragma: no cover - windowed families
        """Patches in each attention window of one frame."""
        raise NotImplementedError

    def sequences(self, layer: int, item: VisualInput) -> list[int]:
        """Patches of each attention sequence of one frame at block ``layer``."""
        return self.window_sizes(item.height, item.width) if self.windowed(layer) else [item.height * item.width]

    def vision_flops(self, item: VisualInput) -> float:
        vc, d = self.config.vision_config, self.width
        embed = linear(item.patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, d)
        mlp_width, mlp_mats = self.mlp()
        total, costs = embed, {}  # attention of a block kind (windowed or not), computed once
        for layer in range(vc.depth):
            windowed = self.windowed(layer)
            if windowed not in costs:
                costs[windowed] = item.frames * sum(2 * scores(1, d, s, s) for s in self.sequences(layer, item))
            total += block(item.patches, d, d, d, costs[windowed], mlp_width, mlp_mats)
        return total

    def projector_flops(self, item: VisualInput) -> float:
        vc = self.config.vision_config
        d_merged = self.width * vc.spatial_merge_size ** 2
        rows = item.patches // vc.spatial_merge_size ** 2
        mergers = 1 + len(getattr(vc, "deepstack_visual_indexes", None) or ())
        return mergers * (linear(rows, d_merged, d_merged) + linear(rows, d_merged, self.merged_width))

    # ------------------------------------------------------------------ methods' questions
    def vision_info(self) -> VisionInfo:
        return qwen_vision_info(self.config)

    def attention_flops(self, request: AttentionRequest, item: VisualInput) -> float:
        vc, d = self.config.vision_config, self.width
        return linear(item.patches, d, 3 * d) + item.frames * sum(
            scores(vc.num_heads, d // vc.num_heads, s if request.query == "received" else 1, s)
            for s in self.sequences(request.layer, item))

    def vision_head_dim(self) -> int:
        return self.width // self.config.vision_config.num_heads


class Qwen2VLCosts(QwenVLCosts):
    """Qwen2-VL: its ViT width is ``embed_dim``, its MLP ``mlp_ratio`` times wider, no deepstack."""

    model_types = ("qwen2_vl",)

    @property
    def width(self) -> int:
        return self.config.vision_config.embed_dim

    @property
    def merged_width(self) -> int:
        return self.config.vision_config.hidden_size

    def mlp(self) -> tuple[int, int]:
        return self.width * self.config.vision_config.mlp_ratio, 2


class Qwen25VLCosts(QwenVLCosts):
    """Qwen2.5-VL: windowed attention outside ``fullatt_block_indexes`` and a gated MLP."""

    model_types = ("qwen2_5_vl",)

    def mlp(self) -> tuple[int, int]:
        return self.config.vision_config.intermediate_size, 3

    def windowed(self, layer: int) -> bool:
        return layer not in self.config.vision_config.fullatt_block_indexes

    def window_sizes(self, height: int, width: int) -> list[int]:
        """Edge windows are partial."""
        vc = self.config.vision_config
        merge = vc.spatial_merge_size
        side = vc.window_size // merge // vc.patch_size  # in merged tokens
        rows, cols = height // merge, width // merge
        return [min(side, rows - i) * min(side, cols - j) * merge * merge
                for i in range(0, rows, side) for j in range(0, cols, side)]


@dataclass(frozen=True)
class GatedDeltaNet:
    """Qwen3.5's linear attention, as transformers' torch reference computes it: input projections (q/k/v,
    the output gate z, the beta and decay rates a/b) and the output projection; a depthwise causal conv over
    q/k/v (prefill: ``tokens + kernel - 1`` outputs, the padded conv; a cached step: 2, over the kept state
    and the new token); the chunked delta rule over ``chunk``-token chunks (the sequence padded to whole
    chunks): per chunk and value head, two chunk x chunk products over the key dim, two reads of the state,
    the intra-chunk product with the corrected values and the state update. A cached step's recurrent
    update is elementwise (not counted, as softmax is not); its cost does not grow with the cache."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    kernel: int
    chunk: int = 64

    @property
    def conv_width(self) -> int:
        return 2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim

    def projections(self, hidden: int, rows: float) -> float:
        values = self.value_heads * self.value_dim
        return (linear(rows, hidden, self.conv_width) + linear(rows, hidden, values)
                + 2 * linear(rows, hidden, self.value_heads) + linear(rows, values, hidden))

    def conv(self, outputs: float) -> float:
        return 2.0 * outputs * self.conv_width * self.kernel

    def flops(self, hidden: int, queries: float, keys: float) -> float:
        c, dk, dv = self.chunk, self.key_dim, self.value_dim
        chunks = math.ceil(queries / c)
        rule = self.value_heads * chunks * (4 * c * c * dk + 2 * c * c * dv + 6 * c * dk * dv)
        return self.projections(hidden, queries) + self.conv(queries + self.kernel - 1) + rule

    def decode_flops(self, hidden: int, cached: int, steps: int) -> float:
        return steps * (self.projections(hidden, 1) + self.conv(2))


def gated_delta_net_from_config(text_config: Any) -> GatedDeltaNet:
    tc = text_config
    return GatedDeltaNet(tc.linear_num_key_heads, tc.linear_num_value_heads, tc.linear_key_head_dim,
                         tc.linear_value_head_dim, tc.linear_conv_kernel_dim)


# Qwen3.5's layer kinds (``layer_types``): its full attention has the q gate
QWEN3_5_MIXERS = {"linear_attention": gated_delta_net_from_config,
                  "full_attention": lambda tc: dataclasses.replace(attention_from_config(tc), gate=True)}


class Qwen35Costs(QwenVLCosts):
    """Qwen3.5 / 3.6 (dense and MoE): the Qwen3-VL ViT without deepstack and a hybrid decoder of gated full
    attention and GatedDeltaNet layers (``layer_types``)."""

    model_types = ("qwen3_5", "qwen3_5_moe")

    def decoder(self) -> Decoder:
        return decoder_from_config(self.config.get_text_config(), mixers=QWEN3_5_MIXERS)
