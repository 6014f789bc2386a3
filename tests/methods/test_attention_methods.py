"""HiPrune and VisionZip: exact budgets, true grid neighbours, size-weighted contextual merges, end to end."""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import greedy_without_placeholders, make_inputs
from vtr.layout import Segment
from vtr.methods import HiPrune, VisionZip, VisualItem
from vtr.methods.base import VisionInfo


def _item(scores_object, scores_deep, grid=(1, 6, 8), keys=None):
    n = grid[0] * grid[1] * grid[2]
    features = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    keys = keys if keys is not None else torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    attention = {"object": (scores_object, keys), "deep": (scores_deep, keys), "dominant": (scores_deep, keys)}
    return VisualItem(features, (Segment(0, grid),), "image", 0, attention)


def test_hiprune_anchors_buffers_registers_fill_the_budget_exactly():
    shallow = torch.zeros(48)
    shallow[7] = 1.0  # row 0, last column: no right or upper neighbour
    shallow[24] = 0.9  # row 3, column 0: its flat predecessor 23 ends row 2 and is NOT a neighbour
    deep = torch.arange(48, dtype=torch.float32) / 100  # registers come from the end of the grid
    deep[23] = -1.0
    reduction = HiPrune(budget=20, alpha=0.5).reduce(_item(shallow, deep))  # round(0.5 * 20 / 5) = 2 anchors
    kept = reduction.kept.tolist()
    assert len(kept) == 20 and kept == sorted(set(kept))
    buffers = {7, 6, 15, 24, 16, 32, 25}  # the anchors and their in-grid neighbours
    assert buffers <= set(kept) and 23 not in kept and 8 not in kept  # no wrapping across rows
    registers = set(kept) - buffers
    assert registers == set(range(48 - len(registers), 48))


def test_hiprune_default_layers_follow_the_paper_and_scale():
    clip = HiPrune(budget=8).attention_requests(VisionInfo(depth=24, feature_layer=22, has_cls=True, encoder="clip"))
    assert (clip["object"].layer, clip["deep"].layer) == (8, 22)
    qwen = HiPrune(budget=8).attention_requests(VisionInfo(depth=32, feature_layer=31, has_cls=False, encoder="qwen"))
    assert (qwen["object"].layer, qwen["deep"].layer) == (15, 31)
    small = HiPrune(budget=8).attention_requests(VisionInfo(depth=3, feature_layer=1, has_cls=True, encoder="clip"))
    assert small["object"].layer == 0
    with pytest.raises(ValueError, match="object_layer must lie in 1..3"):
        HiPrune(budget=8, object_layer=5).attention_requests(VisionInfo(3, 1, True, "clip"))


def test_visionzip_keeps_dominant_tokens_and_averages_contextual_members():
    scores = torch.rand(48, generator=torch.Generator().manual_seed(3))
    item = _item(scores, scores)
    reduction = VisionZip(budget=16, contextual=0.25).reduce(item)  # 12 dominant + 4 contextual
    assert reduction.kept.numel() == 16
    dominant = set(torch.sort(scores, descending=True).indices[:12].tolist())
    assert dominant <= set(reduction.kept.tolist())
    features = reduction.output_features(item)
    for out in range(16):  # every output is the mean of its members (a loop, as the definition says)
        members = (reduction.assignment == out).nonzero().flatten()
        assert torch.allclose(features[out], item.features[members].mean(0), atol=1e-6)
    assert int((reduction.assignment >= 0).sum()) == 48  # every token is represented
    contextual = [out for out in range(16) if int((reduction.assignment == out).sum()) > 1]
    assert 0 < len(contextual) <= 4


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("method", ["hiprune", "visionzip"])
def test_attention_methods_end_to_end_batched_and_cached(tiny, name, method):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, texts=["what ?", "describe this picture please , what is in it ?"],
                         seeds=(0, 1))
    greedy = greedy_without_placeholders(model)
    vtr.wrap(model, method, budget=12)
    cached = model.generate(**inputs, **greedy)
    assert [s.visual_after for s in vtr.stats(model).samples] == [12, 12]
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    alone = model.generate(**make_inputs(processor, name, texts=["what ?"]), **greedy)
    assert torch.equal(alone.sequences[0, -6:], cached.sequences[0, -6:])


def test_families_without_an_attention_mapping_say_so(tiny):
    model, processor = tiny("llava_next")
    vtr.wrap(model, "hiprune", budget=8)
    with pytest.raises(vtr.ReductionError, match="cannot yet map vision-encoder attention.*llava_next"):
        model.generate(**make_inputs(processor, "llava_next"), max_new_tokens=2)
