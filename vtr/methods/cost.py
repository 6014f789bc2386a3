"""What a method's cost hook (``Method.own_flops``) is given: one recorded sample, its visual inputs'
geometry, the vision-side answers of the model's family, and the decoder.

The FLOPs model (``vtr.measure.flops``) builds a ``SampleWork`` per batch row and sums every configured
method's ``own_flops``; a method costs its own matmuls from it and asks the family (``VisionCosts``, which
each family's costs in ``vtr.adapters`` implement) for what depends on the vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vtr.costs.counting import VisualInput
from vtr.costs.decoder import Decoder
from vtr.methods.base import AttentionRequest, BudgetedMethod, Method, VisionInfo, split_budget
from vtr.stats import ItemStats, SampleStats

if TYPE_CHECKING:
    from vtr.methods.vision import EncoderGeometry


class VisionCosts(Protocol):
    """What a method's cost may ask of the model's family about its vision tower."""

    def vision_info(self) -> VisionInfo:
        """The encoder as methods see it (their attention requests follow from it)."""

    def attention_flops(self, request: AttentionRequest, item: VisualInput) -> float:
        """Capturing ``request`` on ``item``: the layer's q/k projections and the score matmul of the
        requested query rows, per attention sequence (image, crop, frame or window)."""

    def vision_head_dim(self) -> int:
        """Width of one encoder attention head (the keys methods compare)."""

    def part_sizes(self, item: VisualInput, content: int, per_frame: bool) -> list[int]:
        """Content tokens of each part a per-segment / per-frame allocation splits ``item`` into."""

    def merge_geometry(self, tokens: int) -> "EncoderGeometry":
        """The geometry a vision-stage matcher is built with for sequences of ``tokens`` tokens."""


@dataclass(frozen=True)
class SampleWork:
    """One recorded batch row: its stats, its visual inputs' geometry (in ``sample.items`` order, with the
    encoder token counts a vision-stage merge recorded), the family's vision answers and the decoder."""

    sample: SampleStats
    items: tuple[VisualInput, ...]
    vision: VisionCosts
    decoder: Decoder

    def pairs(self) -> list[tuple[ItemStats, VisualInput]]:
        return list(zip(self.sample.items, self.items))

    def attention_capture(self, method: Method) -> float:
        """The vision attention ``method`` asks for, on every item it asks it for."""
        wanted = [item for item in self.items if method.wants_attention(item.modality)]
        if not wanted:
            return 0.0
        requests = method.attention_requests(self.vision.vision_info()).values()
        return sum(self.vision.attention_flops(request, item) for item in wanted for request in requests)

    def tokens_per_layer(self) -> list[int]:
        return tokens_per_layer(self.sample, len(self.decoder.layers))


def tokens_per_layer(sample: SampleStats, num_layers: int) -> list[int]:
    """Tokens each decoder layer saw in the prefill of a recorded sample."""
    if not sample.visual_per_layer:
        return [sample.prompt_after] * num_layers
    return [sample.prompt_after - (sample.visual_after - visual) for visual in sample.visual_per_layer]


def selected_parts(method: BudgetedMethod, stats: ItemStats, item: VisualInput,
                   vision: VisionCosts) -> list[tuple[int, int]]:
    """(part size, tokens kept) of every part a budgeted method selected in (none when it kept all)."""
    n = stats.content_before
    k = method.budget.tokens_for(n)
    if k >= n:
        return []
    parts, shares = [n], [k]
    if stats.parts:  # the allocation recorded its split (the only way for "thumbnail": it follows attention)
        parts, shares = [size for size, _ in stats.parts], [kept for _, kept in stats.parts]
    elif method.allocation != "global":
        parts = vision.part_sizes(item, n, per_frame=method.allocation == "per_frame")
        shares = split_budget(k, parts)
    return [(size, share) for size, share in zip(parts, shares) if 0 < share < size]
