"""Temporal segmentation of a video into windows of frames whose static tokens can collapse to one frame.

HoliTom's global redundancy-aware segmentation (``reference/holitom-dymu.md`` 1.2): a spatial position
is *static* over a window [s, e] when the cosine similarity of its features in every pair of consecutive
frames of the window is strictly above tau. Collapsing the window keeps one copy of each static token,
so it removes ``|static(s, e)| * (e - s)`` tokens. An exact dynamic programme picks the partition of
the frames into consecutive windows that removes the most tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def consecutive_similarity(frames: Tensor) -> Tensor:
    """(T, N, D) features -> (T-1, N) cosine similarity of each position in frames t and t+1 (float32).

    Dot products over the product of norms, without a normalised copy of the whole video (the reference
    normalises, then takes the cosine: the same value up to rounding).
    """
    x = frames.float()
    norms = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)
    return torch.linalg.vecdot(x[1:], x[:-1]) / (norms[1:] * norms[:-1])


def static_run_lengths(above: Tensor) -> Tensor:
    """(T-1, N) bool "pair (t, t+1) is similar at p" -> (T-1, N) consecutive similar pairs from t on.

    ``run[t, p] >= w`` exactly when position p is static over the window of frames t .. t + w.
    """
    pairs = above.shape[0]
    steps = torch.arange(pairs, device=above.device).unsqueeze(1).expand_as(above)
    first_break = torch.where(above, pairs, steps)  # a dissimilar pair ends every run through it
    first_break = first_break.flip(0).cummin(0).values.flip(0)  # first dissimilar pair at or after t
    return first_break - steps


def window_counts(above: Tensor) -> Tensor:
    """(T, T) tokens removed by collapsing the window of frames s .. e (``counts[s, e]``, 0 unless s < e).

    Vectorised over every window: a histogram of run lengths per start frame gives how many positions
    stay static for at least w - 1 pairs.
    """
    pairs = above.shape[0]
    frames = pairs + 1
    device = above.device
    counts = torch.zeros(frames, frames, dtype=torch.long, device=device)
    if pairs == 0:
        return counts
    runs = static_run_lengths(above)
    hist = torch.zeros(pairs, frames, dtype=torch.long, device=device)
    hist.scatter_add_(1, runs, torch.ones_like(runs))
    at_least = hist.flip(1).cumsum(1).flip(1)  # at_least[s, l]: positions static for >= l pairs from s
    length = torch.arange(frames, device=device).unsqueeze(0) - torch.arange(pairs, device=device).unsqueeze(1)
    static = at_least.gather(1, length.clamp(0, frames - 1))
    counts[:pairs] = torch.where(length >= 1, static * length, 0)
    return counts


def best_segmentation(counts: Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """Windows (start, end), inclusive and in time order, that remove the most tokens, and that total.

    The reference's exact DP with its tie rules: ``dp[i]`` is the best total over frames 0..i; the
    singleton [i, i] is tried first and a window of w = 2 .. ``max_window`` frames ending at i replaces
    the best only when strictly better, so a singleton beats an equal window and the shortest of equal
    windows wins. It runs on the host over integer counts (one copy of a (T, T) matrix): the recursion
    is sequential in the frames and costs O(T * max_window) scalar steps.
    """
    table = counts.tolist()
    frames = len(table)
    dp: list[int] = []
    start: list[int] = []
    for i in range(frames):
        best, first = (dp[i - 1] if i else 0), i
        for w in range(2, min(i + 1, max_window) + 1):
            j = i - w
            value = (dp[j] if j >= 0 else 0) + table[j + 1][i]
            if value > best:
                best, first = value, j + 1
        dp.append(best)
        start.append(first)
    windows, i = [], frames - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1], (dp[-1] if dp else 0)
