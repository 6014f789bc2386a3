"""DivPrune (CVPR 2025): keep the most diverse visual tokens by greedy max-min cosine distance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtr.costs.counting import linear
from vtr.methods.base import BudgetedMethod, Reduction, Stage, VisualItem
from vtr.methods.cost import SampleWork, selected_parts
from vtr.ops.maxmin import greedy_maxmin
from vtr.ops.similarity import cosine_distance


@dataclass(frozen=True)
class DivPrune(BudgetedMethod):
    """Greedy max-min diversity on the cosine distance of the projected (LLM-input) features.

    First pick and tie rules follow the reference (see ``vtr.ops.maxmin``); kept tokens are returned in
    their original order, so the LLM sees them in raster order as the reference does.
    """

    name: ClassVar[str] = "divprune"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    def select(self, item: VisualItem, k: int) -> Reduction:
        picks = greedy_maxmin(cosine_distance(item.features)[None], k)[0]
        return Reduction(kept=picks.sort().values)

    def own_flops(self, work: SampleWork) -> float:
        """The N x N cosine-similarity matmul over the projected features of every part it selected in."""
        d = work.decoder.hidden
        return work.attention_capture(self) + sum(linear(size, d, size) for stats, item in work.pairs()
                                                  for size, _ in selected_parts(self, stats, item, work.vision))
