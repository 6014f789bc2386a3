"""Gemma 4: the exactness invariants of the pre-LLM methods on its variable-size pooled grids, bidirectional
image block, per-layer input embeddings and sliding-window layers, vision attention through the 2x2 pool, and
videos as (frames, h, w) grids, and the tested refusals (vision merging; on KV-sharing layers, late prunes and
renumbering). The in-LLM methods run in tests/llm/test_pruner.py (GEMMAS)."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vtr
from conftest import (check_batch_equals_rows_alone, check_cached_equals_uncached, check_keep_all_and_unwrap,
                      greedy_without_placeholders, make_inputs, padded_inputs)
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import _encode
from vtr.methods.base import AttentionRequest

PRE_LLM = {"divprune": dict(method="divprune", budget=0.3), "random": dict(method="random", budget=9),
           "pool": dict(method="pool", budget=0.25), "hiprune": dict(method="hiprune", budget=0.3),
           "visionzip": dict(method="visionzip", budget=8)}


@pytest.fixture(scope="module")
def gemma():
    """One tiny Gemma 4 for the module; every test leaves it unwrapped."""
    return testing.build("gemma4")


def _greedy(model):
    return greedy_without_placeholders(model, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
                                       output_scores=True)


def _two_sizes(processor):
    """Two rows whose images pool to different grids (7x9 and 9x7 tokens), the first row left-padded."""
    images = [[testing.random_image(64, 48)], [testing.random_image(48, 64, seed=1)]]
    texts = [testing.prompt(processor, "what ?"), testing.prompt(processor, "describe this picture please ?")]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_the_grid_of_each_image_is_its_pooled_patch_grid(gemma):
    model, processor = gemma
    inputs = _two_sizes(processor)
    adapter = adapter_for(model)
    features = adapter.item_features("image", adapter.encode("image", inputs))
    assert [tuple(f.shape[:1]) for f in features] == [(63,), (63,)]
    grids = [layout.segments[0].grid for layout in adapter.item_layouts("image", inputs, features)]
    assert grids == [(1, 7, 9), (1, 9, 7)]  # (rows, columns) of 2x2 windows over 18x14 and 14x18 patches


def test_keep_all_is_bit_identical_and_unwrap_restores(gemma):
    model, processor = gemma
    check_keep_all_and_unwrap(model, padded_inputs(processor, "gemma4"), _greedy(model))


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_pre_llm_prune_equals_the_hand_written_prune(gemma, positions):
    """The reference: the model's own forward on the kept columns (ids, token types, positions) with the kept
    features through ``mm_encoder_outputs``. The kept image tokens stay one run of token type 1 (they still
    attend to each other bidirectionally), and the per-layer embeddings come from the kept ids."""
    model, processor = gemma
    inputs = make_inputs(processor, "gemma4")
    with vtr.reduced(model, "divprune", budget=0.3, positions=positions), torch.no_grad():
        out = model(**inputs)
    kept = out.vtr_kept_index[0]
    ids = inputs["input_ids"][:, kept]
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    rank = (is_image.cumsum(0) - 1)[kept][is_image[kept]]  # which of the image's tokens stayed
    assert 0 < rank.numel() < int(is_image.sum())
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_position_ids"])
        kept_features = features.pooler_output[0][rank]
        position_ids = kept.unsqueeze(0) if positions == "original" else torch.arange(kept.numel()).unsqueeze(0)
        reference = type(model).forward(
            model, input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"][:, kept],
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(kept_features,))}).logits
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", list(PRE_LLM))
def test_cached_generate_equals_uncached(gemma, config):
    model, processor = gemma
    with vtr.reduced(model, **PRE_LLM[config]):
        check_cached_equals_uncached(model, padded_inputs(processor, "gemma4"), _greedy(model))


@pytest.mark.parametrize("config", list(PRE_LLM))
def test_left_padded_batch_of_different_grids_equals_rows_alone(gemma, config):
    model, processor = gemma
    inputs = _two_sizes(processor)
    assert (inputs["attention_mask"] == 0).any()
    with vtr.reduced(model, **PRE_LLM[config]):
        check_batch_equals_rows_alone(model, inputs, _greedy(model))


@pytest.mark.parametrize("chunked", [False, True], ids=["together", "one_image_per_chunk"])
@pytest.mark.parametrize("layer", [0, 1])
def test_attention_of_an_llm_token_is_the_mean_over_its_2x2_patches(gemma, layer, chunked, monkeypatch):
    """Recomputed under SDPA from the tower's q/k (norms, 2-D rotary, padding masked) against eager attention
    weights: the attention each valid patch receives from the valid patches, averaged over each pooling window.
    The same when the images (or a video's frames) are scored one chunk at a time, and each image's map a few
    query rows at a time."""
    if chunked:
        import vtr.vision.attention
        monkeypatch.setitem(vtr.vision.attention.CHUNK_ENTRIES, "cpu", 1)
        monkeypatch.setattr(vtr.vision.attention, "MAP_ENTRIES", 1000)
    model, processor = gemma
    inputs = _two_sizes(processor)
    encoded = _encode(adapter_for(model), "image", inputs, inputs["input_ids"], inputs["attention_mask"],
                      {"a": AttentionRequest(layer, "received")}, None)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model.model.vision_tower(inputs["pixel_values"], pixel_position_ids=inputs["image_position_ids"],
                                             output_attentions=True).attentions[layer].mean(1)
    finally:
        model.set_attn_implementation("sdpa")
    for image, attention in enumerate(encoded.attention):
        positions = inputs["image_position_ids"][image]
        valid = (positions != -1).all(-1)
        received = eager[image][valid][:, valid].mean(0)
        x, y = positions[valid].unbind(-1)
        grid = torch.zeros(int(y.max()) + 1, int(x.max()) + 1)
        grid[y, x] = received
        rows, columns = grid.shape
        expected = grid.view(rows // 2, 2, columns // 2, 2).mean((1, 3)).flatten()
        scores, keys = attention["a"]
        assert keys.shape == (63, model.config.vision_config.head_dim)
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [testing.GEMMA4_KV_SHARING, testing.GEMMA4_EXPERTS], ids=["kv_sharing", "experts"])
def test_the_published_text_variants_keep_the_invariants(options):
    """KV-sharing layers (which reuse earlier keys and run only the last token in a generate prefill) and
    experts: a reduction is still the model run on the shortened prompt, so cached == uncached and a padded
    batch == its rows alone."""
    model, processor = testing.build_gemma4(**options)
    inputs = _two_sizes(processor)
    with vtr.reduced(model, "divprune", budget=0.3):
        check_cached_equals_uncached(model, inputs, _greedy(model))
        check_batch_equals_rows_alone(model, inputs, _greedy(model))


def test_every_image_of_a_prompt_gets_the_budget(gemma):
    model, processor = gemma
    two = make_inputs(processor, "gemma4", "two_images")
    with vtr.reduced(model, "divprune", budget=5):
        out = model.generate(**two, max_new_tokens=2, do_sample=False)
        assert [item.content_after for item in vtr.stats(model).samples[0].items] == [5, 5]
    assert out.shape[1] == two["input_ids"].shape[1] + 2


@pytest.mark.parametrize("method, options, reason", [
    ("tome", dict(budget=8), "not run on gemma4: the pooler average-pools fixed k x k windows"),
    ("dymu", dict(thresholds=[0.5, 0.5]), "not run on gemma4: the pooler average-pools fixed k x k windows"),
    ("fastv", dict(budget=8, layer=3), "prunes at layer\\(s\\) \\[3\\], after layer 2, the first whose keys"),
    ("pdrop", dict(), "renumbers positions after each drop, which this gemma4 model's KV-sharing layers"),
])
def test_what_gemma4_cannot_take_is_refused_at_wrap_and_the_model_left_as_it_was(gemma, method, options, reason):
    """Vision merging on every Gemma 4; on the variants with KV-sharing layers (E2B, E4B, 31B), a prune after the
    first layer whose keys they reuse, and renumbered positions."""
    model, processor = testing.build_gemma4(**testing.GEMMA4_KV_SHARING) if method in ("fastv", "pdrop") else gemma
    inputs = make_inputs(processor, "gemma4")
    before = model.generate(**inputs, **_greedy(model))
    with pytest.raises(vtr.ReductionError, match=reason):
        vtr.wrap(model, method, **options)
    assert not vtr.is_wrapped(model)
    after = model.generate(**inputs, **_greedy(model))
    assert torch.equal(before.sequences, after.sequences)


def _videos(processor):
    """Two rows with a 4-frame video each (a 7x9 grid of tokens per frame), the first row left-padded."""
    texts = [testing.prompt(processor, "what ?", images=0, videos=1),
             testing.prompt(processor, "describe this video please ?", images=0, videos=1)]
    videos = [testing.random_video(4, 64, 48), testing.random_video(4, 64, 48, seed=1)]
    return processor(videos=videos, text=texts, return_tensors="pt", padding=True, num_frames=4)


VIDEO = {"divprune": dict(method="divprune", budget=0.1), "holitom": dict(method="holitom", budget=0.2),
         "visionzip": dict(method="visionzip", budget=20)}


def test_a_video_is_one_grid_of_its_frames_and_keep_all_is_bit_identical(gemma):
    """Each frame pools into its own grid, its run of placeholders after its timestamp: one (frames, h, w) item."""
    model, processor = gemma
    inputs = _videos(processor)
    adapter = adapter_for(model)
    features = adapter.item_features("video", adapter.encode("video", inputs))
    assert [layout.segments[0].grid for layout in adapter.item_layouts("video", inputs, features)] == [(4, 7, 9)] * 2
    check_keep_all_and_unwrap(model, inputs, _greedy(model))


@pytest.mark.parametrize("config", list(VIDEO))
def test_video_reductions_keep_cached_equal_uncached_and_rows_alone(gemma, config):
    model, processor = gemma
    inputs = _videos(processor)
    with vtr.reduced(model, **VIDEO[config]):
        check_cached_equals_uncached(model, inputs, _greedy(model))
        check_batch_equals_rows_alone(model, inputs, _greedy(model))
        assert all(item.content_after < item.content_before == 252 for item in vtr.stats(model).samples[0].items)


def test_a_modality_the_adapter_does_not_lay_out_is_refused_not_passed_through(gemma, monkeypatch):
    """Pixels of a modality the model takes but the adapter does not reduce raise, rather than reaching the
    model unreduced while vtr reports nothing (as Gemma 4 videos did before vtr laid them out)."""
    model, processor = gemma
    monkeypatch.setattr(type(adapter_for(model)), "modalities_handled", ("image",))
    with vtr.reduced(model, "divprune", budget=4):
        with pytest.raises(vtr.ReductionError, match="passes pixel_values_videos, which vtr does not reduce on gemma4"):
            model.generate(**_videos(processor), max_new_tokens=2, do_sample=False)
