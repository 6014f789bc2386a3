"""ToMe and DyMU on AnyRes images (LLaVA-NeXT's CLIP, OneVision's SigLIP): merged per crop, packed like the
model packs features, padded batches, caches, refusals (the exact no-op is in tests/vision/test_merging.py)."""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import greedy_without_placeholders, make_inputs
from test_tome_dymu import _assert_same_greedy
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import _encode

ANYRES = ["llava_next", "llava_onevision"]
TEXTS = ["what ?", "describe this picture please , what is in it ?"]
MERGE = {
    "tome": dict(method="tome", budget=8),
    "tome_vtu": dict(method="tome", r=3, vtu=True),
    "dymu": dict(method="dymu", thresholds=[0.3] * 3),
    "dymu_no_vtu": dict(method="dymu", thresholds=[0.3] * 3, vtu=False),
}


@pytest.mark.parametrize("name", ANYRES)
@pytest.mark.parametrize("config", list(MERGE))
def test_padded_batch_equals_rows_alone_and_cached_equals_uncached(tiny, name, config):
    model, processor = tiny(name)
    batch = make_inputs(processor, name, texts=TEXTS, seeds=(0, 1))
    assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
    vtr.wrap(model, **MERGE[config])
    greedy = greedy_without_placeholders(model)
    together = model.generate(**batch, **greedy)
    items = [s.items[0] for s in vtr.stats(model).samples]
    assert all(item.stage == "vision" and item.content_after < item.content_before for item in items)
    uncached = model.generate(**batch, **greedy, use_cache=False)
    for row in range(2):
        _assert_same_greedy(together, uncached, row, row)
        alone = model.generate(**make_inputs(processor, name, texts=[TEXTS[row]], seeds=(row,)), **greedy)
        assert vtr.stats(model).samples[0].items[0].provenance == items[row].provenance
        _assert_same_greedy(together, alone, row, 0)


@pytest.mark.parametrize("name", [*ANYRES, "llava_next_video"])
def test_merged_tokens_stay_inside_one_crop_and_reach_the_llm_in_packed_order(tiny, name):
    """A merged token stands for patches of one encoder sequence (the base image or one crop); it takes the
    packed slot of its first member, and newlines follow the rows they close."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    adapter = adapter_for(model)
    encoded = _encode(adapter, "image", inputs, inputs["input_ids"], inputs["attention_mask"], {}, None)
    base, crops = encoded.layouts[0].segments
    region = torch.zeros(base.size + crops.size, dtype=torch.long)  # 0 = base, 1 + c = crop c
    for c, (top, bottom, left, right) in enumerate(crops.crops):
        grid = torch.zeros(crops.grid[1], crops.grid[2], dtype=torch.long)
        grid[top:bottom, left:right] = 1
        region[base.size:][grid.flatten().bool()] = 1 + c
    vtr.wrap(model, "dymu", thresholds=[0.3] * 3, vtu=False)
    with torch.no_grad():
        out = model(**inputs)
    item = vtr.stats(model).samples[0].items[0]
    provenance = torch.tensor(item.provenance)
    assert set(provenance.tolist()) == set(range(item.content_after)) and item.content_after < 40
    for group in range(item.content_after):
        assert region[provenance == group].unique().numel() == 1  # one crop (or the base image) per token
    image_cols = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten().tolist()
    kept = set(out.vtr_kept_index[0].tolist())
    kept_content = [i for i, slot in enumerate(encoded.layouts[0].content.tolist()) if image_cols[slot] in kept]
    assert kept_content == [int((provenance == g).nonzero()[0]) for g in range(item.content_after)]


def test_downsampled_onevision_crops_are_refused_clearly():
    model, processor = testing.build("llava_onevision")
    model.config.vision_aspect_ratio = processor.vision_aspect_ratio = "anyres_max_1"  # interpolates 4x6 -> 3x4
    vtr.wrap(model, "tome", budget=8)
    with pytest.raises(vtr.ReductionError, match="downsampled .* by bilinear interpolation"):
        model(**make_inputs(processor, "llava_onevision"))


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video"])
def test_videos_are_refused_clearly(tiny, name):
    model, processor = tiny(name)
    vtr.wrap(model, "tome", budget=8)
    with pytest.raises(vtr.ReductionError, match="runs on the images of .* not on their videos"):
        model(**make_inputs(processor, name, "video"))
