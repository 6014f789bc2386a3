"""DivPrune's greedy max-min kernel against a naive O(N*k) loop written from the paper's description."""

from __future__ import annotations

import pytest
import torch

from vtr.ops.maxmin import first_maxmin_pick, greedy_maxmin
from vtr.ops.similarity import cosine_distance


def _first_max(scores: dict[int, float]) -> int:
    top = max(scores.values())
    return min(j for j, score in scores.items() if score == top)


def _double_distance(features: torch.Tensor) -> list[list[float]]:
    x = features.double()
    unit = x / x.norm(dim=-1, keepdim=True)
    return (1 - unit @ unit.T).tolist()


def naive_divprune(dist: list[list[float]], k: int) -> list[int]:
    """Reference: first pick = column whose second-smallest distance is largest; then repeatedly the token
    farthest from its nearest selected token; exact ties to the lowest index; never a token twice."""
    n = len(dist)
    second_smallest = {j: sorted(dist[i][j] for i in range(n))[1] for j in range(n)}
    selected = [_first_max(second_smallest)]
    while len(selected) < k:
        nearest_selected = {j: min(dist[s][j] for s in selected) for j in range(n) if j not in selected}
        selected.append(_first_max(nearest_selected))
    return selected


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n,k", [(20, 5), (40, 13), (9, 9)])
def test_matches_naive_reference_on_random_features(seed, n, k):
    features = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    got = greedy_maxmin(cosine_distance(features)[None], k)[0].tolist()
    assert got == naive_divprune(_double_distance(features), k)


@pytest.mark.parametrize("seed", range(4))
def test_matches_naive_reference_with_ties(seed):
    """Duplicated rows create exact distance ties, which resolve to the lowest index; scaled rows create
    distances equal up to rounding, which are not ties (the reference's plain argmax): the naive loop runs
    on the kernel's own float32 distances, so both agree on every comparison."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 8, generator=g)
    features = torch.cat([base, base[[0, 2, 2]], 3.0 * base[[1, 4]]])  # duplicates + same directions
    features = features[torch.randperm(features.shape[0], generator=g)]
    for k in (3, 6, 11):
        got = greedy_maxmin(cosine_distance(features)[None], k)[0].tolist()
        assert got == naive_divprune(cosine_distance(features).tolist(), k)
        assert len(set(got)) == k


@pytest.mark.parametrize("seed", range(4))
def test_first_pick_equals_the_references_second_smallest_rule(seed):
    """The reference: ``topk(2, largest=False)`` per column, second value, argmax. Ours: a column minimum
    with the diagonal at +inf. Equal whenever a token's distance to itself is its smallest (always for
    cosine distance up to rounding; forced here so the comparison is exact)."""
    distance = cosine_distance(torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(seed)))
    distance.diagonal(dim1=-2, dim2=-1).fill_(-1.0)
    reference = distance.topk(2, dim=-2, largest=False).values[:, 1, :].argmax(dim=-1)
    assert torch.equal(first_maxmin_pick(distance.clone()), reference)


def test_step_dispatches_three_ops():
    """The greedy loop's cost is k times one step: argmax, row gather, running minimum."""
    from vtr.measure.overhead import OpCounter

    distance = cosine_distance(torch.randn(1, 200, 16, generator=torch.Generator().manual_seed(0)))
    counts = {}
    for k in (10, 40):
        with OpCounter() as counter:
            greedy_maxmin(distance.clone(), k)
        counts[k] = counter.total
    assert (counts[40] - counts[10]) / 30 == 3


def test_batched_rows_are_independent():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    batched = greedy_maxmin(cosine_distance(torch.stack([a, b])), 7)
    assert batched[0].tolist() == greedy_maxmin(cosine_distance(a)[None], 7)[0].tolist()
    assert batched[1].tolist() == greedy_maxmin(cosine_distance(b)[None], 7)[0].tolist()


def test_low_precision_input_gives_the_float32_selection():
    features = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    full = greedy_maxmin(cosine_distance(features)[None], 10)
    half = greedy_maxmin(cosine_distance(features.to(torch.bfloat16).float())[None], 10)
    assert cosine_distance(features.to(torch.bfloat16)).dtype == torch.float32
    assert full.shape == half.shape == (1, 10)


def test_zero_row_gets_finite_distances():
    features = torch.randn(5, 4)
    features[2] = 0
    dist = cosine_distance(features)
    assert torch.isfinite(dist).all()
    assert torch.allclose(dist[2], torch.ones(5))


def test_bad_k_is_rejected():
    with pytest.raises(ValueError, match="k must lie"):
        greedy_maxmin(cosine_distance(torch.randn(4, 3))[None], 5)
