"""PyramidDrop (Xing et al., CVPR 2025): at the end of each stage keep a fraction of the visual tokens,
ranked by the last instruction token's attention; 32-layer default stages end at layers 8, 16 and 24
(moved to the same relative depth for other LLMs).

The defaults follow the reference code (``Cooperx521/PyramidDrop``, ``pdrop_rank_drop``):

* stage K is scored with layer K's own ``input_layernorm`` / ``q_proj`` / ``k_proj`` applied to the
  hidden states leaving layer K-1 (``score_layer="own"``; ``"previous"`` uses layer K-1's attention,
  the FastV convention);
* after each drop the kept tokens are renumbered: a token's position drops by the number of tokens
  dropped before it, and decoding continues from the renumbered positions (``renumber=False`` keeps
  original positions, as vtr's other in-LLM methods do);
* stage s keeps ``int(N * ratio ** (s + 1))`` of the N tokens a visual input entered the LLM with
  (``rounding="floor"``; ``"round"`` rounds to the nearest count), never fewer than one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from vtr.errors import UnreachableBudgetError
from vtr.methods.layer import LayerInput, LayerMethod, scaled_layer

REFERENCE_DEPTH = 32
REFERENCE_LAYERS = (8, 16, 24)
SCORE_LAYERS = ("own", "previous")
ROUNDINGS = ("floor", "round")
_CANDIDATES = 1 << 16  # schedules compared per solve, at most


@dataclass(frozen=True)
class PDrop(LayerMethod):
    """``layers``: pruning layers (default: 8/16/24 of 32, scaled); ``ratio``: keep ratio per stage.

    ``budget`` (optional) replaces ``ratio``: per visual input, the whole-token count schedule whose
    visual tokens averaged over all decoder layers equal the budget ("equivalent tokens", how papers
    compare PDrop with single-layer methods); see ``count_schedule``. A budget no schedule reaches
    raises ``vtr.errors.UnreachableBudgetError``, a ``ReductionError`` (move the first stage earlier).
    ``score_layer``, ``renumber`` and ``rounding``: the reference's rules by default, vtr's variants as
    options (module docstring).
    """

    name: ClassVar[str] = "pdrop"
    budget_required: ClassVar[bool] = False

    layers: tuple[int, ...] | None = None
    ratio: float = 0.5
    score_layer: str = "own"
    renumber: bool = True
    rounding: str = "floor"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"pdrop ratio (tokens kept per stage) must lie in (0, 1], got {self.ratio}")
        if self.score_layer not in SCORE_LAYERS:
            raise ValueError(f"pdrop score_layer must be one of {SCORE_LAYERS} (layer K's own projections, the "
                             f"reference; or layer K-1's attention, the FastV convention), got {self.score_layer!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"pdrop rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))

    @property
    def scores_own_layer(self) -> bool:
        return self.score_layer == "own"

    @property
    def renumbers_positions(self) -> bool:
        return self.renumber

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return tuple(sorted({scaled_layer(k, REFERENCE_DEPTH, num_layers) for k in REFERENCE_LAYERS}))

    def keep_counts(self, step: LayerInput) -> tuple[int, ...]:
        if self.budget is not None:
            layers = self.prune_layers(step.num_layers)
            counts = [self._schedule(n, self.budget.tokens_for(n), layers, step.num_layers)[step.stage]
                      for n in step.entry_counts]
        else:  # n * ratio ** (s + 1) in float64, floored or rounded half to even
            rounded = math.floor if self.rounding == "floor" else round
            counts = [rounded(n * self.ratio ** (step.stage + 1)) for n in step.entry_counts]
        return tuple(min(max(1, k), current) for k, current in zip(counts, step.counts))

    def _schedule(self, n: int, target: int, layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
        try:
            return count_schedule(n, target, layers, num_layers)
        except ValueError as error:
            raise UnreachableBudgetError(f"pdrop cannot average {target} visual tokens per layer (budget {self.budget} of "
                                 f"{n}): {error}; pass earlier "
                                 f"stage layers (e.g. layers=(2, 8, 16)) or a larger budget") from None


@functools.lru_cache(maxsize=1024)
def count_schedule(n: int, target: int, layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Tokens kept after each stage so that a visual input of ``n`` tokens averages ``target`` tokens over
    ``num_layers`` decoder layers (layers before ``layers[0]`` see all ``n``; stage s's count holds until
    the next stage layer).

    Counts are whole, non-increasing, within [1, n]. The average is met exactly whenever such counts
    reach it; where whole counts cannot (the layers between stages weight the counts, so the reachable
    averages have gaps), the schedule gets as close as possible from below. Among schedules with that
    average, the one nearest (least squares) to the continuous pyramid ``n * ratio ** (s + 1)`` (each
    held within [1, n]) wins. ``target >= n`` keeps everything. Raises ``ValueError`` when even one
    token per stage exceeds the target. Cached: one solve per (tokens, budget, layers), not per call.
    """
    spans = [b - a for a, b in zip(layers, (*layers[1:], num_layers))]
    if target >= n:
        return (n,) * len(layers)
    remaining = target * num_layers - layers[0] * n  # what sum(span * count) must equal
    if remaining < sum(spans):
        least = (layers[0] * n + sum(spans)) / num_layers
        raise ValueError(f"layers 0-{layers[0] - 1} see all {n} tokens and every later stage keeps at least one, "
                         f"at least {least:.2f} per layer on average")
    pyramid = _continuous_pyramid(n, remaining, spans)
    last = spans[-1]
    width = max(1, min(last, int(_CANDIDATES ** (1 / max(len(spans) - 1, 1)) // 2)))
    axes = [torch.arange(max(1, math.floor(x) - width + 1), min(n, math.floor(x) + width) + 1) for x in pyramid[:-1]]
    grid = torch.cartesian_prod(*axes).view(-1, len(axes)) if axes else torch.zeros(1, 0, dtype=torch.long)
    partial = (grid * torch.tensor(spans[:-1], dtype=torch.long)).sum(1)
    bound = grid[:, -1] if axes else torch.full((1,), n)
    final = torch.minimum((remaining - partial).div(last, rounding_mode="floor"), bound)
    candidates = torch.cat([grid, final.unsqueeze(1)], 1)
    valid = (final >= 1) & (candidates[:, :-1] >= candidates[:, 1:]).all(1)
    if not bool(valid.any()):  # unreachable in practice: the all-ones schedule lies in every window
        raise ValueError(f"no whole-token schedule found near the pyramid {pyramid}")
    reached = torch.where(valid, partial + last * final, torch.full_like(final, -1))
    deviation = ((candidates.double() - torch.tensor(pyramid)) ** 2).sum(1)
    best = deviation.masked_fill(reached != reached.max(), math.inf).argmin()
    return tuple(int(c) for c in candidates[best])


def _continuous_pyramid(n: int, remaining: int, spans: list[int]) -> list[float]:
    """Counts ``min(n, max(1, n * ratio ** (s + 1)))`` with the ratio (bisection: the weighted sum grows
    with it) at which ``sum(span * count) == remaining``."""
    def counts(ratio: float) -> list[float]:
        return [min(n, max(1.0, n * ratio ** (s + 1))) for s in range(len(spans))]

    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if sum(s * c for s, c in zip(spans, counts(mid))) < remaining else (low, mid)
    return counts((low + high) / 2)
