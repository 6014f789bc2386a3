"""Spatial average pooling on the token grid: the downsampling baseline of VTC-Bench."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtr.methods.base import BudgetedMethod, Reduction, Stage, VisualItem
from vtr.ops.grid import group_first_member, grid_partition, pooled_grid


@dataclass(frozen=True)
class Pool(BudgetedMethod):
    """Average the features over a partition of the (t, h, w) grid into ``t'*h'*w' <= budget`` boxes.

    The box grid is the largest that fits the budget with the image's aspect ratio (so the count can be
    a little under the budget: 128 of a 24x24 grid gives 11x11 = 121). Each pooled token takes the slot
    and original position of its box's first (top-left) token; ``positions="compact"`` re-indexes them.
    Items with several grids (LLaVA-NeXT's base image and crops) split the budget over the grids in
    proportion to their size and pool each.
    """

    name: ClassVar[str] = "pool"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    def select(self, item: VisualItem, k: int) -> Reduction:
        if len(item.segments) > 1:  # e.g. LLaVA-NeXT base image + crops: pool each grid on its own
            return self.reduce_parts(item, k, per_frame=False)
        grid = item.segments[0].grid
        out = pooled_grid(grid, k)
        n_out = out[0] * out[1] * out[2]
        assignment = grid_partition(grid, out, item.features.device)
        return Reduction(kept=group_first_member(assignment, n_out), assignment=assignment)
