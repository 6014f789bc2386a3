"""Greedy max-min (farthest-point) selection, the core of DivPrune."""

from __future__ import annotations

import torch
from torch import Tensor

TIE_TOLERANCE = 1e-6
"""Scores this close count as tied. Mathematically equal distances (duplicate or rescaled tokens) differ
by float rounding, and differently on CPU and GPU; treating them as ties and taking the lowest index
makes the selection deterministic across devices. The reference's plain argmax differs only when two
candidates are within rounding noise of each other."""


def argmax_lowest(scores: Tensor) -> Tensor:
    """Index of the maximum along the last axis; near-ties (``TIE_TOLERANCE``) go to the lowest index."""
    top = scores.max(dim=-1, keepdim=True).values
    return (scores >= top - TIE_TOLERANCE).int().argmax(dim=-1)  # argmax returns the first maximal index


def first_maxmin_pick(distance: Tensor) -> Tensor:
    """DivPrune's first pick: the token whose nearest other token is farthest away.

    For each column j the reference takes the second-smallest entry of ``distance[:, j]`` (the smallest is
    j's distance to itself) and picks the argmax; ties go to the lowest index. ``distance`` is ``(B, N, N)``;
    returns ``(B,)``.
    """
    n = distance.shape[-1]
    if n < 2:
        return torch.zeros(distance.shape[0], dtype=torch.long, device=distance.device)
    nearest_other = distance.topk(2, dim=-2, largest=False).values[:, 1, :]
    return argmax_lowest(nearest_other)


def greedy_maxmin(distance: Tensor, k: int) -> Tensor:
    """Select ``k`` indices per batch row by greedy max-min dispersion, in greedy order.

    ``distance``: ``(B, N, N)`` symmetric distances. Step i picks the token whose distance to its nearest
    already-selected token is largest (running minimum, O(N) per step on device: the loop is over the k
    picks, which are inherently sequential, never over tokens). Ties go to the lowest index, as
    ``torch.argmax`` does in the reference (see ``TIE_TOLERANCE``). Unlike the reference, selected tokens are masked out, so
    ``k`` larger than the number of distinct tokens never returns an index twice; this changes the result
    only in that degenerate case.
    """
    batch, n, _ = distance.shape
    if not 0 < k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    rows = torch.arange(batch, device=distance.device)
    picks = torch.empty(batch, k, dtype=torch.long, device=distance.device)
    picks[:, 0] = first_maxmin_pick(distance)
    min_dist = distance[rows, picks[:, 0]].clone()
    min_dist[rows, picks[:, 0]] = -torch.inf
    for step in range(1, k):
        pick = argmax_lowest(min_dist)
        picks[:, step] = pick
        min_dist = torch.minimum(min_dist, distance[rows, pick])
        min_dist[rows, pick] = -torch.inf
    return picks
