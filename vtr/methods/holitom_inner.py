"""HoliTom's inner-LLM merge (Shao et al., 2025): at decoder layer K keep the visual tokens the last
prompt token attended to most at layer K-1 and fold every other one into its most similar kept token.

Reference defaults: K=18 of 28 layers, merge ratio r=0.5 (``budget=0.5``). The reference counts the
video's newline tokens in its visual span; here budgets count content tokens (newlines stay, see
README). ``reference_quirks=True`` runs layer K-1 without a causal mask during full passes, as the
reference does under SDPA (its eager fallback gets no mask); the scores are unaffected but every hidden
state after layer K-1 changes, and cached generation then differs from an uncached recompute, as in
the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from vtr.budget import Budget, as_budget
from vtr.costs.counting import linear
from vtr.methods.cost import SampleWork
from vtr.methods.layer import LayerInput, LayerMethod, LayerOutput, scaled_layer, top_scored
from vtr.methods.options import option
from vtr.ops.groups import fold_into_nearest

REFERENCE_DEPTH = 28
REFERENCE_LAYER = 18


@dataclass(frozen=True)
class HoliTomInner(LayerMethod):
    """``layer``: merge layer (default 18 of 28, scaled); ``budget``: kept per visual input (default 0.5)."""

    name: ClassVar[str] = "holitom_inner"
    budget_required: ClassVar[bool] = False

    budget: Budget | int | float | None = option(0.5, convert=as_budget)
    layer: int | None = option(None, low=1)
    reference_quirks: bool = False

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layer is not None:
            return (self.layer,)
        return (scaled_layer(REFERENCE_LAYER, REFERENCE_DEPTH, num_layers),)

    def keep_counts(self, step: LayerInput) -> tuple[int, ...]:
        return tuple(map(self.budget.tokens_for, step.counts))

    def select(self, step: LayerInput) -> LayerOutput:
        kept = top_scored(step, self.keep_counts(step))
        return dataclasses.replace(kept, hidden=fold_into_nearest(step.hidden, kept.keep, step.group))

    def own_flops(self, work: SampleWork) -> float:
        """The score recompute, and the similarity of the L tokens entering layer K (L x L x D) where it
        merged anything (it merges only what it dropped)."""
        visual, total = work.sample.visual_per_layer, super().own_flops(work)
        if not visual:
            return total
        tokens, d = work.tokens_per_layer(), work.decoder.hidden
        return total + sum(linear(tokens[k - 1], d, tokens[k - 1])
                           for k in self.check_layers(len(work.decoder.layers)) if visual[k] < visual[k - 1])
