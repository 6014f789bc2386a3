"""Method cores on synthetic items: budgets, provenance, determinism."""

from __future__ import annotations

import pytest
import torch

from vtr.budget import Budget
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
    assert available_methods() == ["divprune", "dymu", "fastv", "hiprune", "holitom", "holitom_inner", "none", "pdrop",
                                   "pool", "random", "tome", "visionzip"]
    assert make_method("random", 0.5, seed=7) == RandomSelect(budget=0.5, seed=7)
    with pytest.raises(ValueError, match="unknown method .fastv2.*available: divprune, dymu, fastv, hiprune"):
        make_method("fastv2", 64)
    with pytest.raises(ValueError, match="has no option.*'bogus'"):
        make_method("divprune", 64, bogus=1)
    with pytest.raises(ValueError, match="needs a budget"):
        make_method("divprune")
    with pytest.raises(ValueError, match="needs a budget"):
        make_method("fastv")
    with pytest.raises(ValueError, match="does not take a budget"):
        make_method("none", 0.5)
    assert make_method("pdrop").ratio == 0.5 and make_method("holitom_inner").budget == Budget(0.5)
    with pytest.raises(ValueError, match="already configured"):
        make_method(DivPrune(budget=3), 4)


def test_apply_reduces_side_tensors_like_the_features():
    it = item(n_h=4, n_w=4)
    side = torch.randn(16, 3)
    selected = DivPrune(budget=5).reduce(it)
    assert torch.equal(selected.apply(side), side[selected.kept])
    pooled = Pool(budget=4).reduce(it)
    torch.testing.assert_close(pooled.apply(side)[0], side[[0, 1, 4, 5]].mean(0))


def test_split_budget_is_proportional_and_exact():
    from vtr.methods.base import split_budget

    assert split_budget(22, [16, 28]) == [8, 14]
    assert split_budget(3, [16, 28]) == [1, 2]
    assert split_budget(1, [16, 28]) == [0, 1]
    assert split_budget(10, [4, 4, 4, 4]) == [3, 3, 2, 2]
    for k in range(1, 45):
        shares = split_budget(k, [16, 28])
        assert sum(shares) == k and all(0 <= s <= n for s, n in zip(shares, [16, 28]))


@pytest.mark.parametrize("cls", [DivPrune, RandomSelect])
def test_per_frame_allocation_keeps_budget_per_frame(cls):
    video = item(n_h=4, n_w=4, t=4)  # 4 frames of 16 tokens
    red = cls(budget=8, allocation="per_frame").reduce(video)
    assert red.kept.numel() == 8
    assert torch.bincount(red.kept // 16, minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(red.output_features(video), video.features[red.kept])


def test_per_segment_allocation_splits_base_and_crops():
    from vtr.layout import Segment

    feats = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    anyres = VisualItem(feats, (Segment(0, (1, 4, 4)), Segment(16, (1, 4, 6))), "image")
    red = DivPrune(budget=10, allocation="per_segment").reduce(anyres)
    assert ((red.kept < 16).sum(), (red.kept >= 16).sum()) == (4, 6)
    pooled = Pool(budget=10).reduce(anyres)  # pooling always pools each grid on its own
    assert pooled.assignment.shape == (40,) and set(pooled.assignment[:16].tolist()).isdisjoint(
        pooled.assignment[16:].tolist())
    assert pooled.output_features(anyres).shape == (pooled.kept.numel(), 8)


def test_bad_allocation():
    with pytest.raises(ValueError, match="allocation must be one of"):
        DivPrune(budget=4, allocation="thumbnail_typo")
