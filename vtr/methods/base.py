"""The method protocol: what a reduction method receives and returns, and the stage it runs at.

A method is a configured dataclass. Its core is pure tensor code on one visual input (an image, or a
whole video) and knows nothing about model classes; the adapter and the engine feed it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from vtr.budget import Budget
from vtr.layout import Segment
from vtr.ops.grid import group_mean, group_weighted_sum

if TYPE_CHECKING:
    from vtr.vision.attention import AttentionRequest


class Stage(str, Enum):
    """Where in the model a method acts."""

    VISION = "vision"  # inside the vision encoder
    PRE_LLM = "pre_llm"  # on the projected visual features, before the first decoder layer
    LLM = "llm"  # at a decoder layer K


@dataclass(frozen=True)
class VisionInfo:
    """What a method may know about the vision encoder to pick default layers."""

    depth: int  # encoder layers
    feature_layer: int  # 0-based index of the layer whose output becomes the features
    has_cls: bool
    encoder: str  # "clip" (CLIP/SigLIP-style) or "qwen" (Qwen ViT)


@dataclass(frozen=True)
class VisualItem:
    """One visual input as a method sees it.

    ``features`` are the projected features (LLM input space) of the item's content tokens, in the
    order the model scatters them; structural tokens (newlines) are handled by the engine and never
    reach a method. ``segments`` tile those tokens with raster (t, h, w) grids (see ``vtr.layout``).
    ``index`` is the item's rank among the visual inputs of the same modality in its sample: seeded
    methods derive their randomness from it, so a sample gets the same reduction alone or in a batch.
    ``attention``: the vision-encoder attention a method asked for (``attention_requests``), by request
    name: (scores (N,), mean keys (N, d)), aligned with ``features``.
    """

    features: Tensor
    segments: tuple[Segment, ...]
    modality: str
    index: int = 0
    attention: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def on_grid(cls, features: Tensor, grid: tuple[int, int, int], modality: str = "image", index: int = 0,
                attention: dict[str, tuple[Tensor, Tensor]] | None = None):
        return cls(features, (Segment(0, grid),), modality, index, attention or {})

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]

    def parts(self, per_frame: bool) -> list[tuple[int, "VisualItem"]]:
        """(content offset, sub-item) per segment, or per frame of each segment when ``per_frame``."""
        pieces = []
        for segment in self.segments:
            t, h, w = segment.grid
            frames = [(segment.start + f * h * w, (1, h, w)) for f in range(t)] if per_frame else [
                (segment.start, segment.grid)]
            for start, grid in frames:
                stop = start + grid[0] * grid[1] * grid[2]
                attention = {name: (scores[start:stop], keys[start:stop])
                             for name, (scores, keys) in self.attention.items()}
                pieces.append((start, VisualItem.on_grid(self.features[start:stop], grid, self.modality,
                                                         self.index, attention)))
        return pieces


@dataclass(frozen=True)
class Reduction:
    """What a method returns for one item.

    ``kept``: ascending token indices, one per output token: the placeholder slot the output token
    occupies and, unless ``origin`` says otherwise, whose original position it takes. ``features``: the
    output rows when the method merges (``None`` means ``apply(item.features)``). ``assignment``: for
    merges, the output token each input token was folded into (``-1`` = dropped); this provenance drives
    positions and statistics. ``weights``: each input token's weight in its output token (summing to 1
    per output token; ``None`` = the plain mean of the members). ``origin``: for methods whose output
    order is not the order of original positions (HoliTom), the content index whose original position
    each output token takes (``None`` = ``kept``); output token i still sits in slot ``kept[i]``.
    """

    kept: Tensor
    features: Tensor | None = None
    assignment: Tensor | None = None
    weights: Tensor | None = None
    origin: Tensor | None = None

    def apply(self, values: Tensor) -> Tensor:
        """Reduce another per-token tensor (N, ...) of the same item the same way.

        Selection gathers the kept rows; a merge averages each output token's members (weighted by
        ``weights`` when given). Adapters use it for per-token side outputs of the encoder (Qwen3-VL's
        deepstack features).
        """
        if self.assignment is None:
            return values[self.kept]
        members = self.assignment >= 0
        if self.weights is not None:
            return group_weighted_sum(values[members], self.assignment[members], self.weights[members],
                                      self.kept.numel())
        return group_mean(values[members], self.assignment[members], self.kept.numel())

    def provenance(self, num_tokens: int) -> Tensor:
        """(N,) the output token each of the item's ``num_tokens`` tokens went into, -1 where dropped."""
        return self.assignment if self.assignment is not None else _selection_assignment(self.kept, num_tokens)

    def output_features(self, item: VisualItem) -> Tensor:
        """The features the LLM receives: the method's own merged rows, else ``apply(item.features)``."""
        return self.apply(item.features) if self.features is None else self.features

    @classmethod
    def keep_all(cls, item: VisualItem) -> "Reduction":
        return cls(kept=torch.arange(item.num_tokens, device=item.features.device))

    @classmethod
    def concat(cls, parts: list[tuple[int, VisualItem, "Reduction"]]) -> "Reduction":
        """One reduction of the whole item from reductions of its parts ((offset, part, reduction))."""
        if any(r.origin is not None or r.weights is not None for _, _, r in parts):
            raise ValueError("Reduction.concat joins selections and plain-mean merges; a part with origins or "
                             "weights (HoliTom's) must reduce the whole item itself")
        kept = torch.cat([offset + r.kept for offset, _, r in parts])
        if all(r.features is None and r.assignment is None for _, _, r in parts):
            return cls(kept=kept)
        assignments, out_offset = [], 0
        for _, part, r in parts:
            local = r.provenance(part.num_tokens)
            assignments.append(torch.where(local >= 0, local + out_offset, local))
            out_offset += r.kept.numel()
        features = torch.cat([r.output_features(part) for _, part, r in parts])
        return cls(kept=kept, features=features, assignment=torch.cat(assignments))


def _selection_assignment(kept: Tensor, n: int) -> Tensor:
    assignment = torch.full((n,), -1, dtype=torch.long, device=kept.device)
    assignment[kept] = torch.arange(kept.numel(), device=kept.device)
    return assignment


def split_budget(k: int, sizes: list[int]) -> list[int]:
    """Split ``k`` tokens over parts of ``sizes`` in proportion (largest remainder), each part within
    [min(1, size), size] while ``k`` allows, summing to ``k`` exactly."""
    total = sum(sizes)
    quotas = [k * s / total for s in sizes]
    shares = [min(s, max(1 if k >= len(sizes) else 0, int(q))) for s, q in zip(sizes, quotas)]
    order = sorted(range(len(sizes)), key=lambda i: (shares[i] - quotas[i], i))
    while sum(shares) < k:  # hand out the remainder to the parts furthest below their quota
        for i in order:
            if sum(shares) < k and shares[i] < sizes[i]:
                shares[i] += 1
    while sum(shares) > k:  # only when the floor of one token per part overshoots
        i = max(range(len(sizes)), key=lambda j: (shares[j] - quotas[j], j))
        shares[i] -= 1
    return shares


@dataclass(frozen=True)
class Method:
    """Base of every method. Subclasses are frozen dataclasses whose fields are the method's options."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    budget_required: ClassVar[bool] = False  # registry: building by name needs a budget

    def reduce(self, item: VisualItem) -> Reduction:  # pragma: no cover - interface
        raise NotImplementedError

    def attention_requests(self, info: VisionInfo) -> dict[str, "AttentionRequest"]:
        """Vision-encoder attention this method needs, by name (default: none)."""
        return {}

    def describe(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self) if f.init)
        return f"{self.name}({opts})"


@dataclass(frozen=True)
class KeepAll(Method):
    """Keep every visual token: the unreduced reference of a sweep, and the pre-LLM stage of a wrap whose
    only method acts inside the LLM (the engine still encodes once and knows which token is which)."""

    name: ClassVar[str] = "none"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    def reduce(self, item: VisualItem) -> Reduction:
        return Reduction.keep_all(item)


ALLOCATIONS = ("global", "per_segment", "per_frame")


@dataclass(frozen=True)
class BudgetedMethod(Method):
    """A method that keeps ``budget`` tokens per visual input (an image with all its crops, or a video).

    ``allocation`` decides how the budget meets the item's structure: ``"global"`` lets the method
    choose over all tokens at once; ``"per_segment"`` splits the budget over the segments (LLaVA-NeXT's
    base image and crops grid) in proportion to their size; ``"per_frame"`` splits it over every frame.
    """

    budget_required: ClassVar[bool] = True

    budget: Budget | int | float = 0.25
    allocation: str = "global"

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", Budget(self.budget))
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")

    def reduce(self, item: VisualItem) -> Reduction:
        k = self.budget.tokens_for(item.num_tokens)
        if k >= item.num_tokens:
            return Reduction.keep_all(item)
        if self.allocation == "global":
            return self.select(item, k)
        return self.reduce_parts(item, k, per_frame=self.allocation == "per_frame")

    def reduce_parts(self, item: VisualItem, k: int, per_frame: bool) -> Reduction:
        """Split ``k`` over the item's segments (or frames) in proportion and select in each part."""
        parts = item.parts(per_frame)
        shares = split_budget(k, [part.num_tokens for _, part in parts])
        return Reduction.concat([(offset, part, self._reduce_to(part, share))
                                 for (offset, part), share in zip(parts, shares)])

    def _reduce_to(self, part: VisualItem, share: int) -> Reduction:
        if share >= part.num_tokens:
            return Reduction.keep_all(part)
        if share == 0:  # fewer tokens than parts: this part gives up all of its tokens
            return Reduction(kept=torch.zeros(0, dtype=torch.long, device=part.features.device))
        return self.select(part, share)

    def select(self, item: VisualItem, k: int) -> Reduction:  # pragma: no cover - interface
        """Reduce ``item`` to exactly ``k < N`` output tokens."""
        raise NotImplementedError
