"""wrap / unwrap / reduced / stats semantics and the errors users get for bad input."""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import GREEDY, make_inputs


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_wrap_patches_the_instance_only_and_returns_it(tiny):
    model, processor = tiny("llava")
    other, _ = tiny("llava")
    cls_forward, cls_generate = type(model).forward, type(model).generate
    assert vtr.wrap(model, "divprune", budget=8) is model
    assert vtr.is_wrapped(model) and not vtr.is_wrapped(other)
    assert type(model).forward is cls_forward and type(model).generate is cls_generate
    inputs = make_inputs(processor, "llava")
    other(**inputs)  # the unwrapped twin is untouched: full length, no kept index
    assert "vtr_kept_index" not in other(**inputs)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_unwrap_restores_forward_and_generate_bit_for_bit(tiny, name):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    logits, generated = _logits(model, inputs), model.generate(**inputs, **GREEDY)
    vtr.wrap(model, "pool", budget=4)
    assert _logits(model, inputs).shape[1] < logits.shape[1]
    vtr.unwrap(model)
    assert not vtr.is_wrapped(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(_logits(model, inputs), logits)
    again = model.generate(**inputs, **GREEDY)
    assert torch.equal(again.sequences, generated.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.scores, generated.scores))


def test_unwrap_restores_a_previously_patched_forward(tiny):
    model, processor = tiny("llava")
    calls = []
    class_forward = model.forward

    def logging_forward(*args, **kwargs):  # e.g. accelerate's device hooks patch the instance too
        calls.append(1)
        return class_forward(*args, **kwargs)

    model.forward = logging_forward
    vtr.wrap(model, "divprune", budget=8)
    model(**make_inputs(processor, "llava"))
    vtr.unwrap(model)
    assert model.__dict__["forward"] is logging_forward and calls == [1]


def test_wrapping_twice_replaces_the_method(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, "divprune", budget=8)
    vtr.wrap(model, "random", budget=3, seed=1)
    model.generate(**inputs, max_new_tokens=2)
    assert vtr.stats(model).visual_after == [3]
    assert vtr.stats(model).method.startswith("random")
    vtr.unwrap(model)  # one unwrap undoes both
    assert not vtr.is_wrapped(model) and "forward" not in model.__dict__


def test_reduced_context_restores_previous_state(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    with vtr.reduced(model, "random", budget=0.25, seed=0) as same:
        assert same is model
        model.generate(**inputs, max_new_tokens=2)
        assert vtr.stats(model).visual_after == [16]
    assert not vtr.is_wrapped(model)
    vtr.wrap(model, "divprune", budget=8)
    with vtr.reduced(model, "pool", budget=4):
        model.generate(**inputs, max_new_tokens=2)
        assert vtr.stats(model).visual_after == [4]
    model.generate(**inputs, max_new_tokens=2)
    assert vtr.stats(model).visual_after == [8]


def test_two_wrapped_models_do_not_share_state(tiny):
    a, processor = tiny("llava")
    b, _ = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(a, "divprune", budget=5)
    vtr.wrap(b, "divprune", budget=11)
    a.generate(**inputs, max_new_tokens=2)
    b.generate(**inputs, max_new_tokens=2)
    assert vtr.stats(a).visual_after == [5] and vtr.stats(b).visual_after == [11]
    vtr.unwrap(a)
    b.generate(**inputs, max_new_tokens=2)
    assert vtr.stats(b).visual_after == [11]


def test_stats_as_dict_and_text(tiny):
    model, processor = tiny("qwen2_vl")
    vtr.wrap(model, "divprune", budget=6)
    model.generate(**make_inputs(processor, "qwen2_vl", "two_images"), max_new_tokens=2)
    stats = vtr.stats(model)
    raw = stats.as_dict()
    assert raw["samples"][0]["visual_before"] == 96 and raw["samples"][0]["visual_after"] == 12
    assert "image 48->6, image 48->6" in str(stats)


# ---------------------------------------------------------------------------------------- bad input
def test_unsupported_model_names_type_and_supported_list():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    supported = "llava, llava_next, llava_next_video, llava_onevision, qwen2_5_vl, qwen2_vl, qwen3_vl"
    with pytest.raises(vtr.UnsupportedModelError, match=rf"model_type='llama'.*supported: {supported}"):
        vtr.wrap(model, "divprune", budget=8)
    assert not vtr.is_wrapped(model)


def test_bare_backbone_is_refused_with_the_fix(tiny):
    model, _ = tiny("llava")
    with pytest.raises(vtr.UnsupportedModelError, match="ForConditionalGeneration"):
        vtr.wrap(model.model, "divprune", budget=8)


@pytest.mark.parametrize("budget", [0, -1, 0.0, 1.5])
def test_bad_budget_is_a_value_error(tiny, budget):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="budget"):
        vtr.wrap(model, "divprune", budget=budget)
    assert not vtr.is_wrapped(model)


def test_bad_positions_mode(tiny):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="positions must be one of"):
        vtr.wrap(model, "divprune", budget=8, positions="gapless")


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_placeholder_count_mismatch(tiny, name):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    ids = inputs["input_ids"]
    image_cols = (ids[0] == model.config.image_token_id).nonzero().flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[image_cols[-1]] = False  # one placeholder fewer than the image has features
    broken = {k: (v[:, keep] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
              for k, v in inputs.items()}
    vtr.wrap(model, "divprune", budget=8)
    with pytest.raises(vtr.ReductionError, match=r"placeholder tokens .* give \d+ features.*processor"):
        model.generate(**broken, max_new_tokens=2)
    with pytest.raises(vtr.ReductionError, match="placeholder"):
        model(**broken)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_nan_features_are_refused(tiny, name):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    key = "pixel_values"
    inputs[key] = torch.full_like(inputs[key], float("nan"))
    vtr.wrap(model, "divprune", budget=8)
    with pytest.raises(vtr.ReductionError, match="NaN image features.*bfloat16"):
        model.generate(**inputs, max_new_tokens=2)


def test_stats_on_an_unwrapped_model_says_how_to_wrap(tiny):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match=r"vtr.wrap\(model"):
        vtr.stats(model)
    with pytest.raises(ValueError, match="not wrapped"):
        vtr.unwrap(model)


def test_available_methods_and_supported_models():
    assert {"divprune", "random", "pool"} <= set(vtr.available_methods())
    assert {"llava", "qwen2_vl", "qwen2_5_vl"} <= set(vtr.supported_models())
