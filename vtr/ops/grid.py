"""Token-grid helpers: partitioning a (t, h, w) grid into near-equal boxes and averaging over them."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from vtr.layout import Segment


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


def group_weighted_sum(x: Tensor, assignment: Tensor, weights: Tensor, n_groups: int) -> Tensor:
    """Sum of the rows of ``x`` (N, D) times ``weights`` (N,) per group id in ``assignment``; float32
    accumulation. With weights summing to 1 per group it is a weighted mean (HoliTom's centre merge)."""
    sums = torch.zeros(n_groups, x.shape[-1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, assignment, x.float() * weights.float().unsqueeze(-1))
    return sums.to(x.dtype)


def group_first_member(assignment: Tensor, n_groups: int) -> Tensor:
    """Lowest token index in each group: the slot (and original position) a merged token takes."""
    n = assignment.shape[0]
    first = torch.full((n_groups,), n, dtype=torch.long, device=assignment.device)
    return first.scatter_reduce(0, assignment, torch.arange(n, device=assignment.device), reduce="amin")


def pooled_grid(grid: tuple[int, int, int], budget: int) -> tuple[int, int, int]:
    """A (t', h', w') box grid with ``t'*h'*w' <= budget`` that keeps the spatial aspect ratio.

    Frames are kept while the budget allows at least one token per frame (spatial pooling first, as
    video LLMs' own pooling does); below that, frames are pooled too. ``h'`` follows the aspect ratio
    (``h'/h ~ sqrt(per_frame / (h*w))``) and ``w'`` then takes what the per-frame budget leaves, so a
    24x24 grid at 128 gives 11x11 = 121 rather than a distorted 8x16.
    """
    t, h, w = grid
    t_out = min(t, budget)
    per_frame = budget // t_out
    h_out = min(h, max(1, math.isqrt(per_frame * h // w)))
    w_out = min(w, max(1, per_frame // h_out))
    h_out = min(h, max(1, per_frame // w_out))
    return t_out, h_out, w_out


def cross_neighbourhood(segments: Sequence[Segment], tokens: Tensor) -> Tensor:
    """``tokens`` and their up/down/left/right neighbours on their own (t, h, w) grid, ascending, unique.

    Neighbours never wrap across a row, frame or segment edge: a token in column 0 has no left neighbour.
    """
    device = tokens.device
    starts = torch.tensor([s.start for s in segments], device=device)
    stops = torch.tensor([s.stop for s in segments], device=device)
    heights = torch.tensor([s.grid[1] for s in segments], device=device)
    widths = torch.tensor([s.grid[2] for s in segments], device=device)
    segment = torch.searchsorted(stops, tokens, right=True)
    h, w = heights[segment].unsqueeze(1), widths[segment].unsqueeze(1)
    local = (tokens - starts[segment]).unsqueeze(1)
    frame, y, x = local // (h * w), local % (h * w) // w, local % w
    dy = torch.tensor([0, -1, 1, 0, 0], device=device)
    dx = torch.tensor([0, 0, 0, -1, 1], device=device)
    ny, nx = y + dy, x + dx
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    flat = starts[segment].unsqueeze(1) + (frame * h + ny) * w + nx
    return torch.unique(flat[inside])


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores; equal scores keep the lower index (stable on every device)."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]
