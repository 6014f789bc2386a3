"""The method protocol: what a reduction method receives and returns, and the stage it runs at.

A method is a configured dataclass. Its core is pure tensor code on one visual input (an image, or a
whole video) and knows nothing about model classes; the adapter and the engine feed it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from vtr.budget import Budget
from vtr.ops.grid import group_mean


class Stage(str, Enum):
    """Where in the model a method acts."""

    VISION = "vision"  # inside the vision encoder
    PRE_LLM = "pre_llm"  # on the projected visual features, before the first decoder layer
    LLM = "llm"  # at a decoder layer K


@dataclass(frozen=True)
class VisualItem:
    """One visual input as a method sees it.

    ``features`` are the projected features (LLM input space), one row per placeholder token, in the
    order the model scatters them. ``grid`` is (t, h, w) in LLM tokens with ``t*h*w == N`` and raster
    order (frame, row, column). ``index`` is the item's rank among the visual inputs of the same
    modality in its sample: seeded methods derive their randomness from it, so a sample gets the same
    reduction alone or inside a batch.
    """

    features: Tensor
    grid: tuple[int, int, int]
    modality: str
    index: int = 0

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]


@dataclass(frozen=True)
class Reduction:
    """What a method returns for one item.

    ``kept``: ascending token indices, one per output token: the placeholder slot the output token
    occupies and whose original position it takes. ``features``: the output rows when the method merges
    (``None`` means ``item.features[kept]``). ``assignment``: for merges, the output token each input
    token was folded into (``-1`` = dropped); this provenance drives positions and statistics.
    """

    kept: Tensor
    features: Tensor | None = None
    assignment: Tensor | None = None

    def apply(self, values: Tensor) -> Tensor:
        """Reduce another per-token tensor (N, ...) of the same item the same way.

        Selection gathers the kept rows; a merge averages each output token's members. Adapters use it
        for per-token side outputs of the encoder (Qwen3-VL's deepstack features).
        """
        if self.assignment is None:
            return values[self.kept]
        members = self.assignment >= 0
        return group_mean(values[members], self.assignment[members], self.kept.numel())

    def output_features(self, item: VisualItem) -> Tensor:
        """The features the LLM receives: the method's own merged rows, else ``apply(item.features)``."""
        return self.apply(item.features) if self.features is None else self.features

    @classmethod
    def keep_all(cls, item: VisualItem) -> "Reduction":
        return cls(kept=torch.arange(item.num_tokens, device=item.features.device))


@dataclass(frozen=True)
class Method:
    """Base of every method. Subclasses are frozen dataclasses whose fields are the method's options."""

    name: ClassVar[str]
    stage: ClassVar[Stage]

    def reduce(self, item: VisualItem) -> Reduction:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        opts = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}({opts})"


@dataclass(frozen=True)
class BudgetedMethod(Method):
    """A method that keeps ``budget`` tokens per visual input."""

    budget: Budget | int | float = 0.25

    def __post_init__(self) -> None:
        if not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", Budget(self.budget))

    def reduce(self, item: VisualItem) -> Reduction:
        k = self.budget.tokens_for(item.num_tokens)
        if k >= item.num_tokens:
            return Reduction.keep_all(item)
        return self.select(item, k)

    def select(self, item: VisualItem, k: int) -> Reduction:  # pragma: no cover - interface
        """Reduce ``item`` to exactly ``k < N`` output tokens."""
        raise NotImplementedError
