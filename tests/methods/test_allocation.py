"""allocation="thumbnail": the base image's attention over each AnyRes crop decides the crop's share."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import vtr
from conftest import greedy_without_placeholders, make_inputs
from vtr.adapters import adapter_for
from vtr.engine import _encode
from vtr.layout import Segment
from vtr.methods import DivPrune, RandomSelect, VisualItem
from vtr.methods.allocation import crop_masses, split_by_weight
from vtr.methods.base import split_budget

BASE = Segment(0, (1, 4, 4))
CROPS = Segment(16, (1, 4, 6), crops=((0, 4, 0, 3), (0, 4, 3, 6)))  # two crops side by side, as the tiny models


@pytest.mark.parametrize("k", [0, 1, 2, 5, 17, 30])
def test_split_by_weight_sums_to_k_within_each_part(k):
    for weights in itertools.product([0.0, 0.1, 3.0], repeat=3):
        shares = split_by_weight(k, [10, 2, 18], list(weights))
        assert sum(shares) == k
        assert all(0 <= s <= size for s, size in zip(shares, [10, 2, 18]))
        if k >= 3:
            assert min(shares) >= 1  # no part vanishes while the budget allows


def test_split_by_weight_follows_the_weights_and_refills_a_full_part():
    assert split_by_weight(10, [20, 20], [3.0, 1.0]) == [7, 3]  # 1 + 1 first, then 8 split 6 : 2
    # the heavy part holds 4: it is filled and the rest is shared 2 : 1 among the others (water-filling)
    assert split_by_weight(16, [4, 20, 20], [100.0, 2.0, 1.0]) == [4, 8, 4]
    with pytest.raises(ValueError, match="cannot keep 5 tokens"):
        split_by_weight(5, [2, 2], [1.0, 1.0])


def test_crop_mass_is_the_thumbnail_attention_over_each_crop():
    scores = torch.zeros(16)
    scores.view(4, 4)[:, :2] = 0.1  # the left half of the thumbnail lies over crop 0
    scores.view(4, 4)[0, 3] = 0.05
    masses = crop_masses(BASE, CROPS, scores)
    assert torch.allclose(masses, torch.tensor([0.8, 0.05], dtype=torch.float64))
    assert float(masses.sum()) == pytest.approx(float(scores.sum()))


def _anyres_item(thumbnail_scores):
    features = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    keys = torch.zeros(40, 2)
    scores = torch.cat([thumbnail_scores, torch.zeros(24)])
    return VisualItem(features, (BASE, CROPS), "image", 0, {"thumbnail": (scores, keys)})


@pytest.mark.parametrize("cls", [DivPrune, RandomSelect])
def test_the_crop_with_more_thumbnail_attention_gets_more_tokens(cls):
    scores = torch.full((16,), 0.01)
    scores.view(4, 4)[:, 2:] = 0.2  # the right half of the thumbnail: crop 1
    reduction = cls(budget=14, allocation="thumbnail").reduce(_anyres_item(scores))
    base_share, crops_share = split_budget(14, [16, 24])
    assert reduction.parts[0] == (16, base_share)
    assert sum(kept for _, kept in reduction.parts[1:]) == crops_share
    assert reduction.parts[2][1] > reduction.parts[1][1]
    kept = reduction.kept.tolist()
    assert len(kept) == 14 and kept == sorted(set(kept))
    in_crop = [sum(1 for i in kept if i >= 16 and (i - 16) % 6 >= 3 * c and (i - 16) % 6 < 3 * (c + 1))
               for c in (0, 1)]
    assert in_crop == [reduction.parts[1][1], reduction.parts[2][1]]  # each crop selected within its own box
    flipped = cls(budget=14, allocation="thumbnail").reduce(_anyres_item(scores.view(4, 4).flip(1).flatten()))
    assert [kept for _, kept in flipped.parts] == [base_share, reduction.parts[2][1], reduction.parts[1][1]]


def test_thumbnail_allocation_without_crops_is_per_segment():
    item = VisualItem.on_grid(torch.randn(16, 4), (1, 4, 4))
    assert torch.equal(DivPrune(budget=5, allocation="thumbnail").reduce(item).kept,
                       DivPrune(budget=5, allocation="per_segment").reduce(item).kept)


def test_thumbnail_allocation_needs_the_base_image_attention():
    item = VisualItem(torch.randn(40, 8), (BASE, CROPS), "image")
    with pytest.raises(vtr.ReductionError, match="needs the base image's vision attention"):
        DivPrune(budget=14, allocation="thumbnail").reduce(item)


def _expected_crop_shares(model, inputs, budget):
    """Shares from the base image's eager CLS attention and a naive loop over thumbnail tokens."""
    adapter = adapter_for(model)
    info = adapter.vision_info()
    encoded = _encode(adapter, "image", inputs, inputs["input_ids"], inputs["attention_mask"], {}, None)
    internvl = model.config.model_type == "internvl"  # tiles: crops then the thumbnail; one image here
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            pixels = inputs["pixel_values"][-1:] if internvl else inputs["pixel_values"][0]
            attentions = model.model.vision_tower(pixels, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    base_scores = attentions[info.feature_layer][0].mean(0)[0, 1:]  # base image, heads, CLS row, patches
    if internvl:  # an LLM token is a 2x2 block of patches: its score is their mean
        side = math.isqrt(base_scores.numel()) // 2
        base_scores = base_scores.view(side, 2, side, 2).mean((1, 3)).flatten()
    base, crops = encoded.layouts[0].segments
    (_, h, w), (_, rows, width) = base.grid, crops.grid
    masses = [0.0] * len(crops.crops)
    for a, b in itertools.product(range(h), range(w)):
        y, x = int((a + 0.5) / h * rows), int((b + 0.5) / w * width)
        crop = next(i for i, (t, bt, lf, rt) in enumerate(crops.crops) if t <= y < bt and lf <= x < rt)
        masses[crop] += float(base_scores[a * w + b])
    k = budget
    base_share, crops_share = split_budget(k, [base.size, crops.size])
    sizes = [(bt - t) * (rt - lf) for t, bt, lf, rt in crops.crops]
    return [base_share] + split_by_weight(crops_share, sizes, masses)


@pytest.mark.parametrize("name,method", [("llava_next", "divprune"), ("llava_next", "random"),
                                         ("internvl", "divprune")])
def test_thumbnail_allocation_end_to_end(tiny, name, method):
    model, processor = tiny(name)
    texts = ["what ?", "describe this picture please , what is in it ?"]
    inputs = make_inputs(processor, name, texts=texts, seeds=(0, 1))
    expected = _expected_crop_shares(model, make_inputs(processor, name), 14)
    greedy = greedy_without_placeholders(model)
    vtr.wrap(model, method, budget=14, allocation="thumbnail")
    cached = model.generate(**inputs, **greedy)
    items = [s.items[0] for s in vtr.stats(model).samples]
    assert [item.content_after for item in items] == [14, 14]
    assert [kept for _, kept in items[0].parts] == expected
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    n_new = greedy["max_new_tokens"]
    for row, (text, seed) in enumerate(zip(texts, (0, 1))):
        alone = model.generate(**make_inputs(processor, name, texts=[text], seeds=(seed,)), **greedy)
        assert torch.equal(alone.sequences[0, -n_new:], cached.sequences[row, -n_new:])


def test_thumbnail_allocation_on_a_video_is_per_segment(tiny):
    """Videos have no crops: no attention is captured for them (OneVision videos have no mapping) and the
    budget is split like per_segment."""
    model, processor = tiny("llava_onevision")
    inputs = make_inputs(processor, "llava_onevision", "video")
    kept = []
    for allocation in ("thumbnail", "per_segment"):
        vtr.wrap(model, "divprune", budget=10, allocation=allocation)
        with torch.no_grad():
            kept.append(model(**inputs).vtr_kept_index)
    assert vtr.stats(model).samples[0].items[0].content_after == 10
    assert torch.equal(kept[0], kept[1])
