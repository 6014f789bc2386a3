"""Random selection: the baseline every pruning paper should beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtr.methods.base import BudgetedMethod, Reduction, Stage, VisualItem
from vtr.methods.options import SEED, option


@dataclass(frozen=True)
class RandomSelect(BudgetedMethod):
    """Keep ``k`` tokens uniformly at random, reproducibly.

    The generator is seeded from ``seed`` and the item's rank in its sample, so the same prompt gets the
    same tokens whether it runs alone or in a batch, and every image of a prompt gets its own draw.
    """

    name: ClassVar[str] = "random"
    stage: ClassVar[Stage] = Stage.PRE_LLM
    seed: int = option(0, **SEED)

    def select(self, item: VisualItem, k: int) -> Reduction:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + item.index)
        picks = torch.randperm(item.num_tokens, generator=generator)[:k]
        return Reduction(kept=picks.sort().values.to(item.features.device))
