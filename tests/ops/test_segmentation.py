"""HoliTom's temporal segmentation: window counts by definition, the DP against brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from vtr.ops.segmentation import (best_segmentation, consecutive_similarity, static_run_lengths,
                                  window_counts)


def _naive_count(above: torch.Tensor, s: int, e: int) -> int:
    """|{p : pair t similar at p for every t in s..e-1}| * (e - s), straight from the definition."""
    if e <= s:
        return 0
    static = [p for p in range(above.shape[1]) if all(bool(above[t, p]) for t in range(s, e))]
    return len(static) * (e - s)


def _compositions(frames: int, max_window: int):
    """Every partition of 0..frames-1 into consecutive windows of at most ``max_window`` frames."""
    for cuts in itertools.product([False, True], repeat=frames - 1):
        windows, start = [], 0
        for i, cut in enumerate(cuts):
            if cut:
                windows.append((start, i))
                start = i + 1
        windows.append((start, frames - 1))
        if all(e - s + 1 <= max_window for s, e in windows):
            yield windows


def _brute_force(above: torch.Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """The best partition, ties broken as the reference DP breaks them: among the best totals, the shortest
    last window, then the shortest window before it, and so on (a singleton beats an equal window)."""
    frames = above.shape[0] + 1

    def key(windows):
        total = sum(_naive_count(above, s, e) for s, e in windows)
        return (-total, [e - s for s, e in reversed(windows)])

    best = min(_compositions(frames, max_window), key=key)
    return best, -key(best)[0]


def test_run_lengths_count_similar_pairs_from_each_frame():
    above = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    assert static_run_lengths(above).tolist() == [[2, 0], [1, 3], [0, 2], [1, 1]]


@pytest.mark.parametrize("seed", range(20))
def test_window_counts_follow_the_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, n = 2 + seed % 6, 1 + seed % 5
    above = torch.rand(frames - 1, n, generator=generator) < 0.7
    counts = window_counts(above)
    expected = [[_naive_count(above, s, e) for e in range(frames)] for s in range(frames)]
    assert counts.tolist() == expected


@pytest.mark.parametrize("seed", range(60))
def test_dp_equals_brute_force_enumeration(seed):
    generator = torch.Generator().manual_seed(seed)
    frames, n = 2 + seed % 7, 1 + seed % 4
    # few distinct similarity levels and thresholds that hit them exactly: ties and strict '>' matter
    levels = torch.tensor([0.5, 0.8, 0.9, 1.0])
    sim = levels[torch.randint(0, 4, (frames - 1, n), generator=generator)]
    tau = [0.5, 0.8, 0.85][seed % 3]
    max_window = [1024, 2, 3][seed % 3]
    above = sim > tau
    windows, total = best_segmentation(window_counts(above), max_window)
    assert (windows, total) == _brute_force(above, max_window)


def test_ties_prefer_singletons_and_then_the_shortest_window():
    # one position static everywhere: [0,1] + [2] and [0] + [1,2] remove 1 token each, [0,2] removes 2
    above = torch.tensor([[True], [True]])
    assert best_segmentation(window_counts(above), 1024) == ([(0, 2)], 2)
    # two frames, nothing static: the singleton beats the zero-gain window
    assert best_segmentation(window_counts(torch.tensor([[False]])), 1024) == ([(0, 0), (1, 1)], 0)
    # pairs (0,1) and (2,3) similar at one position each, pair (1,2) dissimilar: two windows of two
    above = torch.tensor([[True, False], [False, False], [False, True]])
    assert best_segmentation(window_counts(above), 1024) == ([(0, 1), (2, 3)], 2)
    # max_window=1 forbids any merge
    assert best_segmentation(window_counts(torch.ones(3, 2, dtype=torch.bool)), 1) == (
        [(0, 0), (1, 1), (2, 2), (3, 3)], 0)


def test_single_frame_is_one_singleton_window():
    assert best_segmentation(window_counts(torch.zeros(0, 5, dtype=torch.bool)), 1024) == ([(0, 0)], 0)


def test_consecutive_similarity_is_per_position_cosine():
    frames = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0))
    sim = consecutive_similarity(frames)
    expected = torch.nn.functional.cosine_similarity(frames[1:], frames[:-1], dim=-1)
    torch.testing.assert_close(sim, expected)
