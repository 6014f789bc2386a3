"""FastV (Chen et al., ECCV 2024): at decoder layer K, keep the visual tokens the last prompt token
attended to most at layer K-1. The paper's setting is K=2, keeping 50% on 32-layer LLMs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtr.methods.layer import LayerInput, LayerMethod
from vtr.methods.options import option


@dataclass(frozen=True)
class FastV(LayerMethod):
    """``budget``: tokens (int) or fraction (float) of each visual input kept from layer ``layer`` on."""

    name: ClassVar[str] = "fastv"

    layer: int = option(2, low=1)

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.layer,)

    def keep_counts(self, step: LayerInput) -> tuple[int, ...]:
        return tuple(map(self.budget.tokens_for, step.counts))
