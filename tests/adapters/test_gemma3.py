"""Gemma 3: the exactness invariants on its bidirectional image block and sliding-window layers, SigLIP
attention through the 4x4 average pool, pan-and-scan crops, and the vision-merging refusal.

Gemma's mask building makes every forward costly, so one representative method per invariant group runs
here (divprune: a pre-LLM selection; visionzip: pre-LLM with encoder attention and merged tokens); the
in-LLM methods run in tests/llm/test_pruner.py (FAMILIES).
"""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vtr
from conftest import (check_batch_equals_rows_alone, check_cached_equals_uncached, check_keep_all_and_unwrap,
                      eager_vision_attention, greedy_without_placeholders, make_inputs, padded_inputs)
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import _encode
from vtr.methods.base import AttentionRequest

PRE_LLM = {"divprune": dict(method="divprune", budget=0.3), "visionzip": dict(method="visionzip", budget=6)}


@pytest.fixture(scope="module")
def gemma():
    """One tiny Gemma 3 for the module; every test leaves it unwrapped."""
    return testing.build("gemma3")


def _greedy(model):
    return greedy_without_placeholders(model, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
                                       output_scores=True)


def test_keep_all_is_bit_identical_and_unwrap_restores(gemma):
    model, processor = gemma
    check_keep_all_and_unwrap(model, padded_inputs(processor, "gemma3"), _greedy(model))


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_pre_llm_prune_equals_the_hand_written_prune(gemma, positions):
    """The reference: the model's own forward on the kept columns (ids, token types, positions) with the kept
    features through ``mm_encoder_outputs``. The kept image tokens stay one run of token type 1, so they still
    attend to each other bidirectionally, and the sliding window counts kept tokens."""
    model, processor = gemma
    inputs = make_inputs(processor, "gemma3")
    with vtr.reduced(model, "divprune", budget=0.3, positions=positions), torch.no_grad():
        out = model(**inputs)
    kept = out.vtr_kept_index[0]
    ids = inputs["input_ids"][:, kept]
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    rank = (is_image.cumsum(0) - 1)[kept][is_image[kept]]  # which of the image's tokens stayed
    assert 0 < rank.numel() < int(is_image.sum())
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"]).pooler_output[:, rank]
        position_ids = kept.unsqueeze(0) if positions == "original" else torch.arange(kept.numel()).unsqueeze(0)
        reference = type(model).forward(
            model, input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids,
            token_type_ids=inputs["token_type_ids"][:, kept],
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)}).logits
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", list(PRE_LLM))
def test_cached_generate_equals_uncached(gemma, config):
    model, processor = gemma
    with vtr.reduced(model, **PRE_LLM[config]):
        check_cached_equals_uncached(model, padded_inputs(processor, "gemma3"), _greedy(model))


@pytest.mark.parametrize("config", list(PRE_LLM))
def test_left_padded_batch_equals_rows_alone(gemma, config):
    model, processor = gemma
    inputs = padded_inputs(processor, "gemma3")
    with vtr.reduced(model, **PRE_LLM[config]):
        check_batch_equals_rows_alone(model, inputs, _greedy(model))


def test_every_image_and_every_pan_and_scan_crop_gets_the_budget(gemma):
    """Pan-and-scan gives each crop its own <start_of_image> sequence: each is a visual input of its own."""
    model, processor = gemma
    two = make_inputs(processor, "gemma3", "two_images")
    wide = processor(images=[[testing.random_image(64, 32)]], text=[testing.prompt(processor)], return_tensors="pt",
                     do_pan_and_scan=True, pan_and_scan_min_crop_size=16, pan_and_scan_max_num_crops=2)
    assert wide["pixel_values"].shape[0] == 3  # the image and two crops
    with vtr.reduced(model, "divprune", budget=5):
        model.generate(**two, max_new_tokens=2, do_sample=False)
        assert [item.content_after for item in vtr.stats(model).samples[0].items] == [5, 5]
        out = model.generate(**wide, max_new_tokens=2, do_sample=False)
        assert [item.content_after for item in vtr.stats(model).samples[0].items] == [5, 5, 5]
    assert out.shape[1] == wide["input_ids"].shape[1] + 2


@pytest.mark.parametrize("query", ["received"])
def test_attention_of_an_llm_token_is_the_mean_over_its_4x4_patches(gemma, query):
    model, processor = gemma
    inputs = make_inputs(processor, "gemma3", "two_images")
    layer = 1
    adapter = adapter_for(model)
    encoded = _encode(adapter, "image", inputs, inputs["input_ids"], inputs["attention_mask"],
                      {"a": AttentionRequest(layer, query)}, None)
    eager = eager_vision_attention(model, inputs["pixel_values"], layer).mean(1)  # (images, 256) received
    # patch (4i + a, 4j + b) of the 16x16 patch grid is pooled into LLM token (i, j) of the 4x4 grid
    expected = eager.view(-1, 4, 4, 4, 4).mean((2, 4)).flatten(1)
    for image, attention in enumerate(encoded.attention):
        scores, keys = attention["a"]
        assert scores.shape == (16,) and keys.shape == (16, model.config.vision_config.hidden_size // 2)
        torch.testing.assert_close(scores, expected[image], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["tome", "dymu"])
def test_vision_encoder_merging_is_refused_and_the_model_left_as_it_was(gemma, method):
    model, _ = gemma
    options = dict(thresholds=[0.5, 0.5]) if method == "dymu" else dict(budget=8)
    with pytest.raises(vtr.ReductionError, match="not run on gemma3: the projector average-pools fixed windows"):
        vtr.wrap(model, method, **options)
    assert not vtr.is_wrapped(model)
