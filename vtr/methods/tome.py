"""ToMe (Bolya et al., ICLR 2023): merge ``r`` tokens after every vision-encoder layer by bipartite soft
matching on the attention keys, with size-weighted averages and proportional attention.

Either ``r`` (tokens merged per layer, capped by what a layer can merge) or ``budget`` (tokens per image
reaching the LLM, int or fraction) is given. A budget is met exactly: the merges are spread as evenly
as possible over the layers up to the feature layer, earlier layers taking the remainder, and earlier
layers take more where a later layer could not merge its share (a layer merges at most half of its
tokens). Merges after the feature layer would not change the LLM's input, so none happen there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from vtr.budget import Budget, as_budget
from vtr.errors import ReductionError
from vtr.methods.options import option
from vtr.methods.vision import EncoderGeometry, VisionMethod
from vtr.ops.matching import max_merges


def _most_removable(tokens: int, layers: int, protected: int = 1) -> int:
    """Tokens ``layers`` layers can remove from ``tokens`` by merging as much as possible each time (greedy
    is optimal: what a layer can merge never grows when the sequence shrinks faster)."""
    removed = 0
    for _ in range(layers):
        r = max_merges(tokens - removed, protected)
        removed += r
    return removed


def merge_schedule(tokens: int, remove: int, layers: int, protected: int = 1) -> list[int]:
    """Tokens merged after each of ``layers`` layers so that exactly ``remove`` of ``tokens`` go.

    Even shares, the remainder on the first layers; a layer takes more than its share only when the
    layers after it could not remove the rest. Raises ``ValueError`` when no schedule exists.
    """
    most = _most_removable(tokens, layers, protected)
    if remove > most:
        raise ValueError(f"{layers} merging layers can remove at most {most} of {tokens} tokens, not {remove}")
    schedule = []
    for i in range(layers):
        r = min(max_merges(tokens, protected), -(-remove // (layers - i)))
        while remove - r > _most_removable(tokens - r, layers - i - 1, protected):
            r += 1
        schedule.append(r)
        tokens, remove = tokens - r, remove - r
    return schedule


@dataclass(frozen=True)
class _ScheduledMatcher:
    schedule: tuple[int, ...]

    def active(self, layer: int) -> bool:
        return self.schedule[layer] > 0

    def merges(self, layer: int, similarity: Tensor) -> tuple[int, ...]:
        return (self.schedule[layer],) * similarity.shape[0]


@dataclass(frozen=True)
class ToMe(VisionMethod):
    """``r``: tokens merged after each layer up to the feature layer; ``budget``: tokens per image that
    reach the LLM (int, or a fraction of the image's patch tokens). Give exactly one of them."""

    name: ClassVar[str] = "tome"

    budget: Budget | int | float | None = option(None, convert=as_budget)
    r: int | None = option(None, low=0)

    def __post_init__(self) -> None:
        if (self.r is None) == (self.budget is None):
            raise ValueError("tome takes either r (tokens merged per encoder layer) or budget (tokens per image "
                             f"reaching the LLM), exactly one of them; got r={self.r}, budget={self.budget}")

    def schedule(self, geometry: EncoderGeometry) -> tuple[int, ...]:
        """Tokens merged after each merging layer for an encoder call of this geometry."""
        if self.r is not None:
            return (self.r,) * geometry.merge_layers
        remove = geometry.features - self.budget.tokens_for(geometry.features)
        try:
            return tuple(merge_schedule(geometry.tokens, remove, geometry.merge_layers, geometry.protected))
        except ValueError as error:
            fewest = geometry.features - _most_removable(geometry.tokens, geometry.merge_layers, geometry.protected)
            raise ReductionError(
                f"tome cannot bring {geometry.features} patch tokens down to {self.budget}: {error}; this encoder "
                f"reaches at best {fewest} tokens per image, pass a larger budget"
            ) from None

    def matcher(self, geometry: EncoderGeometry) -> _ScheduledMatcher:
        return _ScheduledMatcher(self.schedule(geometry))
