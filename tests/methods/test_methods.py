"""Method cores on synthetic items: budgets, provenance, determinism."""

from __future__ import annotations

import pytest
import torch

from vtr.methods import DivPrune, Pool, RandomSelect, VisualItem, available_methods, make_method
from vtr.ops.maxmin import greedy_maxmin
from vtr.ops.similarity import cosine_distance


def item(n_h=6, n_w=8, t=1, dim=16, seed=0, index=0):
    feats = torch.randn(t * n_h * n_w, dim, generator=torch.Generator().manual_seed(seed))
    return VisualItem.on_grid(feats, (t, n_h, n_w), "image", index)


@pytest.mark.parametrize("cls", [DivPrune, RandomSelect, Pool])
def test_budget_at_or_above_token_count_keeps_everything(cls):
    it = item()
    for budget in (48, 500, 1.0):
        red = cls(budget=budget).reduce(it)
        assert red.kept.tolist() == list(range(48))
        assert torch.equal(red.output_features(it), it.features)


def test_divprune_keeps_the_greedy_picks_in_original_order():
    it = item()
    red = DivPrune(budget=10).reduce(it)
    picks = greedy_maxmin(cosine_distance(it.features)[None], 10)[0]
    assert red.kept.tolist() == sorted(picks.tolist())
    assert torch.equal(red.output_features(it), it.features[red.kept])


def test_random_is_seeded_per_item_and_differs_between_items():
    a = RandomSelect(budget=12, seed=3).reduce(item(index=0)).kept
    assert torch.equal(a, RandomSelect(budget=12, seed=3).reduce(item(index=0)).kept)
    assert not torch.equal(a, RandomSelect(budget=12, seed=3).reduce(item(index=1)).kept)
    assert not torch.equal(a, RandomSelect(budget=12, seed=4).reduce(item(index=0)).kept)
    assert a.numel() == 12 and bool((a[1:] > a[:-1]).all())


def test_pool_averages_boxes_and_records_provenance():
    it = item(n_h=4, n_w=4)
    red = Pool(budget=4).reduce(it)
    grid = it.features.view(4, 4, -1)
    expected = torch.stack([grid[r:r + 2, c:c + 2].reshape(4, -1).mean(0) for r in (0, 2) for c in (0, 2)])
    torch.testing.assert_close(red.output_features(it), expected)
    assert red.kept.tolist() == [0, 2, 8, 10]  # top-left token of each 2x2 box
    assert red.assignment.view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_pool_on_video_pools_space_first():
    it = item(n_h=4, n_w=4, t=4)
    red = Pool(budget=8).reduce(it)
    assert red.kept.numel() == 8 and red.output_features(it).shape == (8, 16)
    assert set(red.assignment.tolist()) == set(range(8))


def test_registry_and_option_errors():
    assert available_methods() == ["divprune", "pool", "random"]
    assert make_method("random", 0.5, seed=7) == RandomSelect(budget=0.5, seed=7)
    with pytest.raises(ValueError, match="unknown method 'fastv2'.*available: divprune, pool, random"):
        make_method("fastv2", 64)
    with pytest.raises(ValueError, match="has no option.*'bogus'"):
        make_method("divprune", 64, bogus=1)
    with pytest.raises(ValueError, match="needs a budget"):
        make_method("divprune")
    with pytest.raises(ValueError, match="already configured"):
        make_method(DivPrune(budget=3), 4)


def test_apply_reduces_side_tensors_like_the_features():
    it = item(n_h=4, n_w=4)
    side = torch.randn(16, 3)
    selected = DivPrune(budget=5).reduce(it)
    assert torch.equal(selected.apply(side), side[selected.kept])
    pooled = Pool(budget=4).reduce(it)
    torch.testing.assert_close(pooled.apply(side)[0], side[[0, 1, 4, 5]].mean(0))
