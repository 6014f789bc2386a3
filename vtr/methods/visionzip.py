"""VisionZip (CVPR 2025): keep the dominant tokens the vision encoder attends to most, and merge the rest
into a few contextual tokens by key similarity.

Dominant tokens: highest CLS attention at the feature layer (encoders without CLS: attention received).
Contextual tokens: of the remaining tokens, ``round(contextual * budget)`` evenly spaced ones become
targets; every other remaining token joins the target whose mean key (heads averaged, the reference's
"metric") is most similar. The reference default is 54 + 10 for 64 tokens (108 + 20, 162 + 30), i.e.
``contextual = 10/64``.

The defaults follow the reference code (``dvlab-research/VisionZip``):

* with a class token (CLIP), the reference's dominant tokens are the CLS token plus the ``dominant - 1``
  patches of highest CLS attention, and the CLS token reaches the LLM. HF LLaVA's default feature
  selection drops CLS before the projector, so no CLS feature exists to hand the LLM: vtr keeps the
  reference's patches (``dominant - 1`` of them) and the CLS slot stays empty, so a CLIP image gets
  ``budget - 1`` tokens (``cls_slot=True``). ``cls_slot=False`` spends that slot on one more patch
  (vtr's earlier rule: the whole budget in patch tokens). Encoders without CLS (SigLIP, the Qwen ViT)
  have no slot to reserve;
* a contextual token is its target plus the mean of the other tokens that joined it
  (``merge="reference"``); ``merge="mean"`` takes the mean of the target and its members (vtr's earlier
  rule, a size-weighted average like every other vtr merge).

Deviations, documented: members are merged in the LLM's input space (after the projector) rather than
before it, and output tokens stay in raster order, each contextual token in its target's slot and
position (the reference appends contextual tokens after the dominant ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtr.costs.counting import linear
from vtr.methods.base import AttentionRequest, BudgetedMethod, Reduction, Stage, VisionInfo, VisualItem
from vtr.methods.cost import SampleWork, selected_parts
from vtr.methods.hiprune import requested
from vtr.ops.grid import group_mean, top_indices


MERGES = ("reference", "mean")
DOMINANT = "dominant"  # the attention request without a class token (attention received)
DOMINANT_CLS = "dominant_cls"  # with one (CLS attention): the reference reserves a dominant slot for CLS


@dataclass(frozen=True)
class VisionZip(BudgetedMethod):
    """``contextual``: share of the budget spent on merged contextual tokens (default 10/64); ``cls_slot``
    and ``merge``: the reference's rules by default, vtr's earlier ones as options (module docstring)."""

    name: ClassVar[str] = "visionzip"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    contextual: float = 10 / 64
    cls_slot: bool = True
    merge: str = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual < 1.0:
            raise ValueError(f"visionzip contextual share must lie in [0, 1), got {self.contextual}")
        if self.merge not in MERGES:
            raise ValueError(f"visionzip merge must be one of {MERGES} (target + mean of its members, the reference; "
                             f"or the mean of target and members), got {self.merge!r}")

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        name = DOMINANT_CLS if info.has_cls else DOMINANT
        return {**super().attention_requests(info),
                name: AttentionRequest(info.feature_layer, "cls" if info.has_cls else "received")}

    def select(self, item: VisualItem, k: int) -> Reduction:
        with_cls = DOMINANT_CLS in item.attention
        scores, keys = requested(item, DOMINANT_CLS if with_cls else DOMINANT, self.name)
        n = item.num_tokens
        n_contextual = min(round(k * self.contextual), k - 1)
        dominant = top_indices(scores, max(1, k - n_contextual - int(with_cls and self.cls_slot)))
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
        if self.merge == "mean":
            features = group_mean(item.features, assignment, kept.numel())
        else:  # every kept token as it is, each target plus the mean of the others that joined it
            joined = group_mean(item.features[others], assignment[others], kept.numel())
            features = (item.features[kept].float() + joined.float()).to(item.features.dtype)
        return Reduction(kept=kept, features=features, assignment=assignment)

    def own_flops(self, work: SampleWork) -> float:
        """The attention it asks for, and the key similarity of the remaining tokens to the contextual
        targets in every part it selected in."""
        head_dim, total = work.vision.vision_head_dim(), work.attention_capture(self)
        for stats, item in work.pairs():
            for size, k in selected_parts(self, stats, item, work.vision):
                contextual = min(round(k * self.contextual), k - 1)
                contextual = min(contextual, size - (k - contextual))
                total += linear(size - (k - contextual) - contextual, head_dim, contextual)
        return total
