"""HiPrune and VisionZip: exact budgets, true grid neighbours, size-weighted contextual merges, end to end."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import vtr
from conftest import GREEDY, greedy_without_placeholders, make_inputs
from vtr.adapters import adapter_for
from vtr.layout import Segment
from vtr.methods import HiPrune, VisionZip, VisualItem
from vtr.methods.base import VisionInfo
from vtr.ops.grid import top_indices


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


def test_visionzip_mean_merge_keeps_dominant_tokens_and_averages_contextual_members():
    """vtr's earlier rule, kept as merge="mean": each contextual token is the mean of its target and members."""
    scores = torch.rand(48, generator=torch.Generator().manual_seed(3))
    item = _item(scores, scores)
    reduction = VisionZip(budget=16, contextual=0.25, merge="mean").reduce(item)  # 12 dominant + 4 contextual
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


def _reference_visionzip(scores, keys, features, dominant: int, contextual: int, with_cls: bool):
    """The reference's selection and merge, written out for one image: with a class token the dominant set
    is CLS + the ``dominant - 1`` patches of highest CLS attention (CLS cannot reach an HF LLaVA prompt, so
    only the patches are returned); the remaining patches, in order, give ``contextual`` targets every
    ``len(rest) // contextual``; each other remaining patch joins the target of highest key cosine
    similarity; a contextual token is its target plus the mean of the patches that joined it."""
    patches = dominant - 1 if with_cls else dominant
    chosen = sorted(torch.topk(scores, patches).indices.tolist())
    rest = [i for i in range(scores.numel()) if i not in chosen]
    step = len(rest) // contextual
    targets = [rest[j * step] for j in range(contextual)]
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    joined: dict[int, list[int]] = {t: [] for t in targets}
    for i in rest:
        if i not in joined:
            joined[targets[int((unit[targets] @ unit[i]).argmax())]].append(i)
    out = {i: features[i] for i in chosen}
    for t, members in joined.items():
        out[t] = features[t] + (torch.stack([features[m] for m in members]).mean(0) if members else 0)
    return out


@pytest.mark.parametrize("with_cls", [True, False])
@pytest.mark.parametrize("budget, contextual", [(16, 0.25), (64, 10 / 64), (20, 0.2)])
def test_visionzip_default_follows_the_reference_loop(with_cls, budget, contextual):
    n = 96
    generator = torch.Generator().manual_seed(budget)
    scores = torch.rand(n, generator=generator)
    keys = torch.randn(n, 4, generator=generator)
    features = torch.randn(n, 16, generator=generator)
    name = "dominant_cls" if with_cls else "dominant"
    item = VisualItem(features, (Segment(0, (1, 8, 12)),), "image", 0, {name: (scores, keys)})
    reduction = VisionZip(budget=budget, contextual=contextual).reduce(item)
    n_contextual = round(budget * contextual)
    expected = _reference_visionzip(scores, keys, features, budget - n_contextual, n_contextual, with_cls)
    assert reduction.kept.tolist() == sorted(expected)
    assert reduction.kept.numel() == budget - int(with_cls)  # the CLS slot stays empty under HF LLaVA
    got = reduction.output_features(item)
    for out, index in enumerate(reduction.kept.tolist()):
        torch.testing.assert_close(got[out], expected[index], rtol=1e-6, atol=1e-6)


def test_visionzip_cls_slot_false_spends_the_whole_budget_on_patches():
    scores = torch.rand(48, generator=torch.Generator().manual_seed(5))
    item = VisualItem(torch.randn(48, 16), (Segment(0, (1, 6, 8)),), "image", 0,
                      {"dominant_cls": (scores, torch.randn(48, 4))})
    assert VisionZip(budget=16, contextual=0.25).reduce(item).kept.numel() == 15
    old = VisionZip(budget=16, contextual=0.25, cls_slot=False).reduce(item)
    assert old.kept.numel() == 16
    assert set(torch.sort(scores, descending=True).indices[:12].tolist()) <= set(old.kept.tolist())
    with pytest.raises(ValueError, match="visionzip merge must be one of"):
        VisionZip(budget=16, merge="sum")


ATTENTION_MODELS = ["llava", "llava_next", "llava_onevision", "llava_next_video", "qwen2_5_vl", "internvl"]
TEXTS = ["what ?", "describe this picture please , what is in it ?"]


@pytest.mark.parametrize("name", ATTENTION_MODELS)
@pytest.mark.parametrize("method", ["hiprune", "visionzip"])
def test_attention_methods_end_to_end_batched_and_cached(tiny, name, method):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, texts=TEXTS, seeds=(0, 1))
    assert (inputs["attention_mask"] == 0).any(), "the test needs left padding"
    greedy = greedy_without_placeholders(model)
    vtr.wrap(model, method, budget=12)
    cached = model.generate(**inputs, **greedy)
    with_cls = method == "visionzip" and adapter_for(model).vision_info().has_cls  # CLIP, InternViT
    expected = 11 if with_cls else 12  # visionzip's reference spends a dominant slot on CLS, which HF models drop
    assert [item.content_after for s in vtr.stats(model).samples for item in s.items] == [expected, expected]
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    n_new = greedy["max_new_tokens"]
    for row, (text, seed) in enumerate(zip(TEXTS, (0, 1))):  # both rows: the padded one and the longest
        alone = model.generate(**make_inputs(processor, name, texts=[text], seeds=(seed,)), **greedy)
        assert torch.equal(alone.sequences[0, -n_new:], cached.sequences[row, -n_new:])
        for step_batch, step_alone in zip(cached.scores, alone.scores):
            torch.testing.assert_close(step_batch[row], step_alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
@pytest.mark.parametrize("method", ["hiprune", "visionzip"])
def test_attention_methods_keeping_everything_are_bit_identical(tiny, name, method):
    """The attention capture (hooks on the encoder, scores recomputed) must not change the model's output."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, texts=TEXTS, seeds=(0, 1))
    expected = model.generate(**inputs, **GREEDY)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    with vtr.reduced(model, method, budget=1.0):
        got = model.generate(**inputs, **GREEDY)
        with torch.no_grad():
            got_logits = model(**inputs).logits
        assert vtr.stats(model).visual_after == vtr.stats(model).visual_before
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    real = inputs["attention_mask"].bool()
    assert torch.equal(got_logits[real], expected_logits[real])


class _RecordingHiPrune(HiPrune):
    seen: ClassVar[list] = []

    def select(self, item, k):
        self.seen.append((item, k))
        return super().select(item, k)


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_hiprune_buffers_are_neighbours_on_the_packed_anyres_grid(tiny, name):
    """Anchors' up/down/left/right neighbours on the grid the LLM sees (base image, unpadded crops), by a
    naive loop over grid coordinates."""
    model, processor = tiny(name)
    _RecordingHiPrune.seen.clear()
    vtr.wrap(model, _RecordingHiPrune(budget=20, alpha=1.0))  # 4 anchors
    with torch.no_grad():
        model(**make_inputs(processor, name))
    (item, k), = _RecordingHiPrune.seen
    kept = set(vtr.stats(model).samples[0].items[0].provenance.index(out) for out in range(k))
    anchors = top_indices(item.attention["object"][0], 4).tolist()
    assert len(item.segments) == 2 and item.segments[1].grid[2] != item.segments[0].grid[2]
    for anchor in anchors:
        segment = next(s for s in item.segments if s.start <= anchor < s.stop)
        _, h, w = segment.grid
        y, x = divmod(anchor - segment.start, w)
        for ny, nx in ((y, x), (y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w:
                assert segment.start + ny * w + nx in kept
