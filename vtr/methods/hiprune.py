"""HiPrune (arXiv 2508.00553): keep object anchors, their grid neighbours, and global registers, all chosen
from the vision encoder's own attention.

- anchors: the ``round(alpha * k / 5)`` tokens receiving the most attention at the object-centric middle
  layer (the paper's l = 9 of 24 for CLIP-L/336, 16 of 32 for the Qwen2.5-VL ViT; the same relative
  depth for other encoders);
- buffers: the anchors' up/down/left/right neighbours on the real token grid (the reference clamps flat
  indices and so wraps across rows; here a neighbour outside the grid does not exist);
- registers: the rest of the budget, the tokens receiving the most attention at the output layer.

The budget is filled exactly (the reference's Qwen path can under-fill, see the reference notes).
Attention is "received" (mean over every query row, heads averaged), the paper's global attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtr.errors import ReductionError
from vtr.methods.base import AttentionRequest, BudgetedMethod, Reduction, Stage, VisionInfo, VisualItem
from vtr.methods.options import option
from vtr.ops.grid import cross_neighbourhood, top_indices

REFERENCE_OBJECT_LAYER = {"clip": (9, 24), "qwen": (16, 32)}  # (1-based layer, encoder depth)


def requested(item: VisualItem, name: str, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention a method asked for, or a clear error when the item came without it."""
    if name not in item.attention:
        raise ReductionError(f"{method} needs vision-encoder attention {name!r}, which this visual input lacks; "
                             f"run it through vtr.wrap so the engine captures the encoder's attention")
    return item.attention[name]


@dataclass(frozen=True)
class HiPrune(BudgetedMethod):
    """``object_layer``: 1-based encoder layer of the anchors (default: the paper's, scaled); ``alpha``:
    the share of the budget spent on anchors and their buffers: ``round(alpha * budget / 5)`` anchors, each
    with up to four neighbours."""

    name: ClassVar[str] = "hiprune"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    object_layer: int | None = option(None, low=1)
    alpha: float = option(0.1, low=0, high=1)

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        layer = self.object_layer
        if layer is None:
            reference, depth = REFERENCE_OBJECT_LAYER[info.encoder]
            layer = max(1, round(reference * info.depth / depth))
        if not 1 <= layer <= info.depth:
            raise ValueError(f"hiprune object_layer must lie in 1..{info.depth} for this encoder, got {layer}")
        return {**super().attention_requests(info), "object": AttentionRequest(layer - 1),
                "deep": AttentionRequest(info.feature_layer)}

    def select(self, item: VisualItem, k: int) -> Reduction:
        shallow, _ = requested(item, "object", self.name)
        deep, _ = requested(item, "deep", self.name)
        anchors = top_indices(shallow, round(self.alpha * k / 5))
        core = cross_neighbourhood(item.segments, anchors)
        if core.numel() > k:  # a tiny budget: keep the strongest of anchors and buffers
            core = core[top_indices(shallow[core], k)]
        deep = deep.float().clone()
        deep[core] = float("-inf")
        registers = top_indices(deep, k - core.numel())
        return Reduction(kept=torch.cat([core, registers]).sort().values)
