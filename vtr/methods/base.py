"""The method protocol: what a reduction method receives and returns, and the stage it runs at.

A method is a configured dataclass. Its core is pure tensor code on one visual input (an image, or a
whole video) and knows nothing about model classes; the adapter and the engine feed it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from vtr.budget import Budget, as_budget
from vtr.errors import ReductionError
from vtr.layout import Segment
from vtr.methods.allocation import crop_masses, split_by_weight
from vtr.methods.options import checking_options, option
from vtr.ops.grid import group_mean, group_weighted_sum

if TYPE_CHECKING:
    from vtr.methods.cost import SampleWork


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


VISION_QUERIES = ("cls", "received")  # vtr.vision.attention: the CLS row, or the mean over every query row


@dataclass(frozen=True)
class AttentionRequest:
    """Scores of one encoder layer (0-based index into the encoder's layers)."""

    layer: int
    query: str = "received"

    def __post_init__(self) -> None:
        if self.query not in VISION_QUERIES:
            raise ValueError(f"vision attention query must be one of {VISION_QUERIES}, got {self.query!r}")


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
                pieces.append((start, self.subset(slice(start, stop), grid)))
        return pieces

    def crop_parts(self) -> list[tuple[Tensor, "VisualItem"]]:
        """(content indices, sub-item) per segment, each AnyRes crops grid split into its crops
        (``Segment.crops``); a crop's indices are not contiguous (the packed grid's rows run across crops)."""
        device = self.features.device
        pieces = []
        for segment in self.segments:
            if not segment.crops:
                members = torch.arange(segment.start, segment.stop, device=device)
                pieces.append((members, self.subset(members, segment.grid)))
                continue
            frames, _, width = segment.grid
            if frames != 1:
                raise ValueError(f"crop boxes need a single-frame grid, got {segment.grid}")
            for top, bottom, left, right in segment.crops:
                rows = torch.arange(top, bottom, device=device)
                cols = torch.arange(left, right, device=device)
                members = segment.start + (rows[:, None] * width + cols[None, :]).flatten()
                pieces.append((members, self.subset(members, (1, bottom - top, right - left))))
        return pieces

    def subset(self, members: Tensor | slice, grid: tuple[int, int, int]) -> "VisualItem":
        """The tokens ``members`` (raster order of ``grid``) as an item of their own."""
        attention = {name: (scores[members], keys[members]) for name, (scores, keys) in self.attention.items()}
        return VisualItem.on_grid(self.features[members], grid, self.modality, self.index, attention)


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
    ``parts``: what an allocation did (``Reduction.concat``); the FLOPs model reads it.
    """

    kept: Tensor
    features: Tensor | None = None
    assignment: Tensor | None = None
    parts: tuple[tuple[int, int], ...] = ()  # (tokens, kept) per part, when an allocation split the item
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
    def concat(cls, parts: list[tuple[int | Tensor, VisualItem, "Reduction"]]) -> "Reduction":
        """One reduction of the whole item from reductions of the parts that tile it: (where, part,
        reduction), ``where`` being the part's first content index (a contiguous part) or its ascending
        content indices (an AnyRes crop). Records each part's (tokens, kept) in ``parts``."""
        if any(r.origin is not None or r.weights is not None for _, _, r in parts):
            raise ValueError("Reduction.concat joins selections and plain-mean merges; a part with origins or "
                             "weights (HoliTom's) must reduce the whole item itself")
        members = [torch.arange(where, where + part.num_tokens, device=part.features.device)
                   if isinstance(where, int) else where for where, part, _ in parts]
        kept, order = torch.cat([m[r.kept] for m, (_, _, r) in zip(members, parts)]).sort()
        sizes = tuple((part.num_tokens, r.kept.numel()) for _, part, r in parts)
        if all(r.features is None and r.assignment is None for _, _, r in parts):
            return cls(kept=kept, parts=sizes)
        rank = torch.empty_like(order)  # output token of each part's output, in concatenation order
        rank[order] = torch.arange(order.numel(), device=order.device)
        assignment = torch.full((sum(p.num_tokens for _, p, _ in parts),), -1, dtype=torch.long, device=kept.device)
        out_offset = 0
        for m, (_, part, r) in zip(members, parts):
            local = r.provenance(part.num_tokens)
            assignment[m] = torch.where(local >= 0, rank[(local + out_offset).clamp_min(0)], local)
            out_offset += r.kept.numel()
        features = torch.cat([r.output_features(part) for _, part, r in parts])[order]
        return cls(kept=kept, features=features, assignment=assignment, parts=sizes)


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
    """Base of every method. Subclasses are frozen dataclasses whose fields are the method's options.

    Every option is checked against its field's type hint and ``option(...)`` range when the object is
    built (``vtr.methods.options``), before the subclass's own ``__post_init__`` runs.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    budget_required: ClassVar[bool] = False  # registry: building by name needs a budget
    # the engine skips a whole item's gathers and checks for a method that never drops a token
    keeps_every_token: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "checks_options", False):
            cls.__post_init__ = checking_options(own)

    @checking_options
    def __post_init__(self) -> None:
        """Subclasses' own checks (between options, or conversions) go in their ``__post_init__``."""

    def reduce(self, item: VisualItem) -> Reduction:  # pragma: no cover - interface
        raise NotImplementedError

    def reads_crop_boxes(self) -> bool:
        """Whether ``reduce`` reads ``Segment.crops`` (the AnyRes crop boxes): finding them costs the engine
        a replay of the model's packing per call, so it does so only for a method that says it reads them."""
        return False

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        """Vision-encoder attention this method needs, by name (default: none)."""
        return {}

    def wants_attention(self, modality: str) -> bool:
        """Whether the engine must capture vision-encoder attention for this method's ``modality`` inputs
        (it then asks the adapter for ``vision_info``, which some encoder configurations cannot give).
        Default: whenever the method overrides ``attention_requests``."""
        return type(self).attention_requests is not Method.attention_requests

    def own_flops(self, work: SampleWork) -> float:
        """FLOPs of this method's own work on one recorded sample (``vtr.methods.cost``), which the FLOPs
        model adds up as ``reduction``: by default the vision-encoder attention it asks for. A method that
        multiplies matrices of its own adds them; keep-all, random and pooling multiply nothing."""
        return work.attention_capture(self)

    def describe(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self) if f.init)
        return f"{self.name}({opts})"


@dataclass(frozen=True)
class KeepAll(Method):
    """Keep every visual token: the unreduced reference of a sweep, and the pre-LLM stage of a wrap whose
    only method acts inside the LLM (the engine still encodes once and knows which token is which)."""

    name: ClassVar[str] = "none"
    stage: ClassVar[Stage] = Stage.PRE_LLM
    keeps_every_token: ClassVar[bool] = True

    def reduce(self, item: VisualItem) -> Reduction:
        return Reduction.keep_all(item)


Allocation = Literal["global", "per_segment", "per_frame", "thumbnail"]
THUMBNAIL = "thumbnail"  # the attention request name of allocation="thumbnail"


@dataclass(frozen=True)
class BudgetedMethod(Method):
    """A method that keeps ``budget`` tokens per visual input (an image with all its crops, or a video).

    ``allocation`` decides how the budget meets the item's structure: ``"global"`` lets the method
    choose over all tokens at once; ``"per_segment"`` splits the budget over the segments (LLaVA-NeXT's
    base image and crops grid) in proportion to their size; ``"per_frame"`` splits it over every frame;
    ``"thumbnail"`` (GlobalCom2-style, AnyRes images) splits it over the base image and each crop:

    1. the base image and the crops together get their proportional shares, as with ``"per_segment"``;
    2. the crops' share is split over the crops in proportion to their *mass*, the base image's
       attention (CLS attention with CLIP, attention received with SigLIP, at the feature layer) over
       each crop's region (``vtr.methods.allocation``), by ``split_by_weight``: one token per crop first
       while the share allows, the rest by water-filling capped at each crop's size, rounded by largest
       remainder, so the shares sum to the budget exactly;
    3. the method selects in the base image and in each crop (a rectangle of the packed grid) on its own.

    Items without crops (LLaVA-1.5, Qwen, videos, OneVision's base-only multi-image inputs) fall back to
    ``"per_segment"``. The base image's attention is captured for every method, also those that need no
    attention themselves (divprune, random).
    """

    budget_required: ClassVar[bool] = True

    budget: Budget | int | float = option(0.25, convert=as_budget)
    allocation: Allocation = "global"

    def reads_crop_boxes(self) -> bool:
        return self.allocation == THUMBNAIL

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        if self.allocation != THUMBNAIL:
            return {}
        return {THUMBNAIL: AttentionRequest(info.feature_layer, "cls" if info.has_cls else "received")}

    def wants_attention(self, modality: str) -> bool:
        if type(self).attention_requests is not BudgetedMethod.attention_requests:  # hiprune, visionzip
            return True
        return self.allocation == THUMBNAIL and modality == "image"  # only images have AnyRes crops

    def reduce(self, item: VisualItem) -> Reduction:
        k = self.budget.tokens_for(item.num_tokens)
        if k >= item.num_tokens:
            return Reduction.keep_all(item)
        if self.allocation == "global":
            return self.select(item, k)
        if self.allocation == THUMBNAIL and any(segment.crops for segment in item.segments):
            return self.reduce_crops(item, k)
        return self.reduce_parts(item, k, per_frame=self.allocation == "per_frame")

    def reduce_crops(self, item: VisualItem, k: int) -> Reduction:
        """``allocation="thumbnail"``: the base image keeps its proportional share, the crops split the rest
        by the base image's attention over their regions (see the class docstring)."""
        if len(item.segments) != 2 or item.segments[0].crops or not item.segments[1].crops:
            raise ReductionError(f"allocation='thumbnail' needs a base image followed by an AnyRes crops grid, "
                                 f"got segments {item.segments}")
        if THUMBNAIL not in item.attention:
            raise ReductionError("allocation='thumbnail' needs the base image's vision attention, which this "
                                 "visual input lacks; run the method through vtr.wrap so the engine captures it")
        base, crops = item.segments
        scores = item.attention[THUMBNAIL][0]
        base_share, crops_share = split_budget(k, [base.size, crops.size])
        parts = item.crop_parts()
        weights = crop_masses(base, crops, scores[base.start:base.stop]).tolist()
        shares = [base_share] + split_by_weight(crops_share, [p.num_tokens for _, p in parts[1:]], weights)
        return Reduction.concat([(members, part, self._reduce_to(part, share))
                                 for (members, part), share in zip(parts, shares)])

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
