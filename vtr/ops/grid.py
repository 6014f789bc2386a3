"""Token-grid helpers: partitioning a (t, h, w) grid into near-equal boxes and averaging over them."""

from __future__ import annotations

import torch
from torch import Tensor


def _axis_bins(n: int, m: int, device: torch.device) -> Tensor:
    """Bin of each of ``n`` coordinates when cut into ``m`` contiguous bins whose sizes differ by at most 1."""
    return torch.arange(n, device=device) * m // n


def grid_partition(grid: tuple[int, int, int], out: tuple[int, int, int], device: torch.device) -> Tensor:
    """Box index (raster order over ``out``) of every token of a raster-ordered ``grid``.

    Unlike ``adaptive_avg_pool``, whose windows overlap when sizes do not divide, the boxes form a
    partition, so every token belongs to exactly one output token (clean provenance).
    """
    (t, h, w), (to, ho, wo) = grid, out
    tb, hb, wb = (_axis_bins(n, m, device) for n, m in ((t, to), (h, ho), (w, wo)))
    return ((tb[:, None, None] * ho + hb[None, :, None]) * wo + wb[None, None, :]).flatten()


def group_mean(x: Tensor, assignment: Tensor, n_groups: int) -> Tensor:
    """Mean of the rows of ``x`` (N, D) per group id in ``assignment`` (N,); accumulates in float32."""
    sums = torch.zeros(n_groups, x.shape[-1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, assignment, x.float())
    counts = torch.bincount(assignment, minlength=n_groups).clamp_min(1).unsqueeze(-1)
    return (sums / counts).to(x.dtype)


def group_first_member(assignment: Tensor, n_groups: int) -> Tensor:
    """Lowest token index in each group: the slot (and original position) a merged token takes."""
    n = assignment.shape[0]
    first = torch.full((n_groups,), n, dtype=torch.long, device=assignment.device)
    return first.scatter_reduce(0, assignment, torch.arange(n, device=assignment.device), reduce="amin")


def pooled_grid(grid: tuple[int, int, int], budget: int) -> tuple[int, int, int]:
    """Largest (t', h', w') box grid with ``t'*h'*w' <= budget``, spatial aspect kept as close as possible.

    Frames are kept while the budget allows at least one token per frame (spatial pooling first, as in
    video LLMs' own pooling); below that, frames are pooled too. Scans at most ``h`` candidates.
    """
    t, h, w = grid
    t_out = min(t, budget)
    per_frame = budget // t_out
    best = (1, 1)
    for h_out in range(1, h + 1):
        w_out = min(w, per_frame // h_out)
        if w_out < 1:
            break
        area, best_area = h_out * w_out, best[0] * best[1]
        skew = abs(h_out / w_out - h / w)
        if area > best_area or (area == best_area and skew < abs(best[0] / best[1] - h / w)):
            best = (h_out, w_out)
    return t_out, best[0], best[1]
