"""FLOPs of the Qwen-VL ViT and patch mergers (``vtr.adapters.costs``).

Assumptions, each the behaviour of transformers 5.x: vision attention runs per frame (temporal patch);
Qwen2.5-VL's windowed blocks per window of ``window_size`` pixels (``fullatt_block_indexes`` per frame).
Qwen2-VL and Qwen3-VL vision MLPs have two matmuls, Qwen2.5-VL's three (gated). The patch merger (two
linears on ``merge**2`` patches) counts as projector, once more per Qwen3-VL deepstack layer.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vtr.adapters.costs import FamilyCosts
from vtr.adapters.qwen_vl import qwen_vision_info
from vtr.costs.counting import VisualInput, block, linear, scores
from vtr.methods.base import AttentionRequest, VisionInfo


class QwenVLCosts(FamilyCosts):
    """Qwen3-VL (and what the other Qwen-VL generations share): full attention in every block, a
    two-matmul MLP, deepstack mergers."""

    model_types = ("qwen3_vl",)

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
