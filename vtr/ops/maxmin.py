"""Greedy max-min (farthest-point) selection, the core of DivPrune.

Cost matters here more than anywhere: the loop over the k picks is inherently sequential, so every op in
one step is k kernel launches on a GPU. One step is three ops for one item (argmax, one row fetch,
running minimum; a fourth, an offset, for a batch), which the diagonal trick below makes possible: with
the diagonal at ``-inf``, a picked token's running minimum becomes ``-inf`` by itself, so it never wins
again and needs no masking op. On CUDA the whole loop is one Triton launch instead
(``vtr.ops.maxmin_triton``, the same picks); the torch loop is the CPU path.

Ties go to the lowest index, because ``torch.argmax`` returns the first maximal index, as in the
reference's plain ``argmax`` over the same distances: equal scores only (distances that differ by float
rounding are not ties, exactly as in the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtr.ops import maxmin_triton


def first_maxmin_pick(distance: Tensor) -> Tensor:
    """DivPrune's first pick: the token whose nearest other token is farthest away.

    The reference takes, for each column j, the second-smallest entry of ``distance[:, j]`` (the smallest
    being j's distance to itself) and picks the argmax. Here the diagonal is set to ``+inf`` in place and a
    plain column minimum gives the nearest other token (one op instead of a top-2 sort over N×N).
    ``distance`` is ``(B, N, N)`` and is modified (its diagonal); returns ``(B,)``.
    """
    if distance.shape[-1] < 2:
        return torch.zeros(distance.shape[0], dtype=torch.long, device=distance.device)
    distance.diagonal(dim1=-2, dim2=-1).fill_(torch.inf)
    return distance.amin(dim=-2).argmax(dim=-1)


def greedy_maxmin(distance: Tensor, k: int) -> Tensor:
    """Select ``k`` indices per batch row by greedy max-min dispersion, in greedy order.

    ``distance``: ``(B, N, N)`` symmetric distances, **overwritten on its diagonal** (callers pass a
    matrix they just computed; copying an N×N matrix of a 32-frame video would cost more than the whole
    selection). Step i picks the token whose distance to its nearest already-selected token is largest
    (a running minimum, O(N) per step on device; the loop is over the k picks, never over tokens). A
    selected token is never picked twice, so ``k`` up to N always returns distinct indices (the reference
    can repeat an index once fewer than k distinct tokens exist).
    """
    batch, n, _ = distance.shape
    if not 0 < k <= n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    pick = first_maxmin_pick(distance)
    distance.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)  # a picked token's own distance: never wins again
    if maxmin_triton.serves(distance):  # CUDA: all k picks in one launch, the same picks
        return maxmin_triton.greedy_maxmin_triton(distance, pick, k)
    # rows are fetched with index_select on the flattened matrix: advanced indexing (distance[rows, pick])
    # sweeps all N×N entries on CPU (6.5 ms per step at N=6273, against 13 µs)
    flat = distance.view(batch * n, n)
    offset = None if batch == 1 else torch.arange(batch, device=distance.device) * n
    picks = [pick]
    min_dist = None
    for _ in range(1, k):  # fold in the last pick's row, then pick the farthest token
        row = flat.index_select(0, pick if offset is None else pick + offset)
        min_dist = row if min_dist is None else torch.minimum(min_dist, row)
        pick = min_dist.argmax(dim=-1)
        picks.append(pick)
    return torch.stack(picks, dim=1)
