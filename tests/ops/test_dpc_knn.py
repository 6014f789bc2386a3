"""DPC-KNN centres, nearest-centre assignment and the beta-weighted merge against naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from vtr.ops.dpc_knn import centre_weights, dpc_knn_centres, nearest_centre, scaled_distances


def _naive_dpc_knn(x: torch.Tensor, c: int, k: int) -> tuple[list[int], list[int]]:
    """The reference spec written as loops: (ascending centres, nearest centre of every token)."""
    n, d = x.shape
    rows = x.double().tolist()
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))) / math.sqrt(d) for j in range(n)]
            for i in range(n)]
    largest = max(max(row) for row in dist)
    density = [math.exp(-sum(v * v for v in sorted(dist[i])[:k]) / k) for i in range(n)]
    score = []
    for i in range(n):
        denser = [dist[i][j] for j in range(n) if density[j] > density[i]]
        score.append((min(denser) if denser else largest) * density[i])
    order = sorted(range(n), key=lambda i: (-score[i], i))
    centres = sorted(order[:c])
    cluster = []
    for i in range(n):
        if i in centres:
            cluster.append(centres.index(i))
            continue
        best = min(range(c), key=lambda m: (dist[i][centres[m]], m))
        cluster.append(best)
    return centres, cluster


@pytest.mark.parametrize("seed", range(25))
def test_dpc_knn_equals_the_naive_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    n, d = 4 + seed % 9, 3 + seed % 5
    x = torch.randn(n, d, generator=generator) + 5.0  # a common offset, as projected features have
    c = 1 + seed % n
    k = min(1 + seed % 7, c)
    distances = scaled_distances(x)
    centres = dpc_knn_centres(distances, c, k)
    expected_centres, expected_cluster = _naive_dpc_knn(x, c, k)
    assert centres.tolist() == expected_centres
    assert nearest_centre(distances, centres).tolist() == expected_cluster


def test_scaled_distances_are_euclidean_over_sqrt_d_with_a_zero_diagonal():
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(0)) * 3 + 100
    distances = scaled_distances(x)
    torch.testing.assert_close(distances, torch.cdist(x.double(), x.double()).float() / 4, atol=1e-4, rtol=1e-4)
    assert torch.equal(distances.diagonal(), torch.zeros(7))


def test_one_neighbour_ties_every_density_and_picks_the_lowest_indices():
    """k = 1: every density is exp(0); without noise the reference would pick at random, here 0..c-1."""
    distances = scaled_distances(torch.randn(9, 4, generator=torch.Generator().manual_seed(1)))
    assert dpc_knn_centres(distances, 3, 1).tolist() == [0, 1, 2]
    noise = 1e-6 * torch.rand(9, generator=torch.Generator().manual_seed(5))
    noise[7] = 2e-6  # the densest token has no denser one: its peak distance is the matrix maximum
    assert 7 in dpc_knn_centres(distances, 3, 1, noise=noise).tolist()


def test_nearest_centre_ties_go_to_the_lowest_centre():
    x = torch.tensor([[0.0], [2.0], [1.0], [4.0]])  # token 2 is as far from 0 as from 1
    distances = scaled_distances(x)
    assert nearest_centre(distances, torch.tensor([0, 1])).tolist() == [0, 1, 0, 1]


def test_centre_weights_give_beta_to_the_centre_and_share_the_rest():
    cluster = torch.tensor([0, 0, 1, 0, 2, 2])
    centres = torch.tensor([0, 2, 5])
    weights = centre_weights(cluster, centres, beta=0.6)
    torch.testing.assert_close(weights, torch.tensor([0.6, 0.2, 1.0, 0.2, 0.4, 0.6]))
    sums = torch.zeros(3).index_add_(0, cluster, weights)
    torch.testing.assert_close(sums, torch.ones(3))


def test_bad_cluster_counts_are_refused():
    distances = scaled_distances(torch.randn(4, 2))
    with pytest.raises(ValueError, match="1 <= c <= n"):
        dpc_knn_centres(distances, 5, 2)
