"""VisionZip (CVPR 2025): keep the dominant tokens the vision encoder attends to most, and merge the rest
into a few contextual tokens by key similarity.

Dominant tokens: highest CLS attention at the feature layer (encoders without CLS: attention received).
Contextual tokens: of the remaining tokens, ``round(contextual * budget)`` evenly spaced ones become
targets; every other remaining token joins the target whose mean key (heads averaged, the reference's
"metric") is most similar; each contextual token is the mean of its members. The reference default is
54 + 10 for 64 tokens (108 + 20, 162 + 30), i.e. ``contextual = 10/64``.

Deviations, documented: members are averaged in the LLM's input space (after the projector) rather than
before it, and output tokens stay in raster order, each contextual token in its target's slot and
position (the reference appends contextual tokens after the dominant ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtr.methods.base import AttentionRequest, BudgetedMethod, Reduction, Stage, VisionInfo, VisualItem
from vtr.methods.hiprune import requested
from vtr.ops.grid import group_mean, top_indices


@dataclass(frozen=True)
class VisionZip(BudgetedMethod):
    """``contextual``: share of the budget spent on merged contextual tokens (default 10/64)."""

    name: ClassVar[str] = "visionzip"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    contextual: float = 10 / 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual < 1.0:
            raise ValueError(f"visionzip contextual share must lie in [0, 1), got {self.contextual}")

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        return {**super().attention_requests(info),
                "dominant": AttentionRequest(info.feature_layer, "cls" if info.has_cls else "received")}

    def select(self, item: VisualItem, k: int) -> Reduction:
        scores, keys = requested(item, "dominant", self.name)
        n = item.num_tokens
        n_contextual = min(round(k * self.contextual), k - 1)
        dominant = top_indices(scores, k - n_contextual)
        rest_mask = torch.ones(n, dtype=torch.bool, device=scores.device)
        rest_mask[dominant] = False
        rest = rest_mask.nonzero().squeeze(1)
        n_contextual = min(n_contextual, rest.numel())
        if n_contextual == 0:
            return Reduction(kept=dominant.sort().values)
        step = rest.numel() // n_contextual
        is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=rest.device)
        is_target[torch.arange(n_contextual, device=rest.device) * step] = True
        targets, others = rest[is_target], rest[~is_target]
        unit = torch.nn.functional.normalize(keys.float(), dim=-1)
        joins = (unit[others] @ unit[targets].T).argmax(-1) if others.numel() else others
        kept = torch.cat([dominant, targets]).sort().values
        output_of = torch.full((n,), -1, dtype=torch.long, device=scores.device)
        output_of[kept] = torch.arange(kept.numel(), device=kept.device)
        assignment = output_of.clone()
        assignment[others] = output_of[targets[joins]]
        return Reduction(kept=kept, features=group_mean(item.features, assignment, kept.numel()),
                         assignment=assignment)
