"""wrap / unwrap / reduced / stats semantics and the errors users get for bad input."""

from __future__ import annotations

import math

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
    supported = ", ".join(vtr.supported_models())  # every adapter's model types, sorted
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


def _hooks(model: torch.nn.Module) -> list:
    return [(name, tuple(m._forward_hooks.values()), tuple(m._forward_pre_hooks.values()))
            for name, m in model.named_modules()]


def _snapshot(model: torch.nn.Module, inputs: dict) -> dict:
    """Everything a failed wrap could have touched: weights, hooks, the instance's patched attributes (and the
    wrap state's pipeline, on a wrapped model), and what forward computes."""
    state = getattr(model, "_vtr_state", None)
    return dict(weights={k: v.clone() for k, v in model.state_dict().items()}, hooks=_hooks(model),
                instance={k: model.__dict__.get(k) for k in ("forward", "generate", "_vtr_state")},
                pipeline=None if state is None else state.pipeline, logits=_logits(model, inputs))


def _assert_unchanged(model: torch.nn.Module, inputs: dict, before: dict) -> None:
    after = _snapshot(model, inputs)
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(after["weights"][k], v) for k, v in before["weights"].items())
    assert after["hooks"] == before["hooks"]
    assert all(after["instance"][k] is v for k, v in before["instance"].items())
    assert after["pipeline"] is before["pipeline"]
    assert torch.equal(after["logits"], before["logits"])


# (wrap arguments, error type, message naming the problem and the fix); each fails before the model is touched
BAD_WRAPS = {
    "seed_str": (dict(method="random", budget=8, seed="x"), ValueError, r"random seed must be an int .*e\.g\. seed=0"),
    "layer_str": (dict(method="fastv", budget=0.5, layer="2"), ValueError, r"fastv layer must be an int >= 1, got '2'"),
    "layer_float": (dict(method="fastv", budget=0.5, layer=2.0), ValueError, r"fastv layer must be an int .*got 2\.0"),
    "method_none": (dict(method=None, budget=8), ValueError, r"method must be a method name .*e\.g\. method='divprune'"),
    "alpha_negative": (dict(method="hiprune", budget=8, alpha=-1), ValueError, r"alpha must be .* in \[0, 1\], got -1"),
    "alpha_five": (dict(method="hiprune", budget=8, alpha=5.0), ValueError, r"alpha must be .*got 5\.0.*e\.g\."),
    "alpha_nan": (dict(method="hiprune", budget=8, alpha=math.nan), ValueError, r"alpha must be a number \(not NaN\)"),
    # needs the model: checked at wrap against the encoder / decoder depth
    "dymu_count": (dict(method="dymu", thresholds=[0.5] * 5), ValueError,
                   r"dymu has 5 thresholds, .*after 2 layers .* of 3; pass one threshold per merging layer"),
    "object_layer": (dict(method="hiprune", budget=8, object_layer=7), ValueError, r"object_layer must lie in 1\.\.3"),
    "fastv_depth": (dict(method="fastv", budget=0.5, layer=4), ValueError, r"within 1\.\.3"),
    "pdrop_depth": (dict(method="pdrop", layers=(1, 9)), ValueError, r"within 1\.\.3"),
    "tome_unreachable": (dict(method="tome", budget=8), vtr.ReductionError,
                         r"tome cannot bring 64 patch tokens down to 8.*pass a larger budget"),
    # hooks already installed (the PPE rotary hooks) when the in-LLM layer turns out to be out of range
    "ppe_then_layer": (dict(method="fastv", budget=0.5, layer=9, positions="ppe"), ValueError, r"within 1\.\.3"),
}


# a re-wrap of a wrapped model: the cases that fail once the adapter is known (and one that fails before)
REWRAPS = ["seed_str", "dymu_count", "object_layer", "pdrop_depth", "tome_unreachable", "ppe_then_layer"]


@pytest.mark.parametrize("case,wrapped_before", [(case, False) for case in BAD_WRAPS] + [(case, True) for case in REWRAPS])
def test_a_failed_wrap_leaves_the_model_exactly_as_it_was(tiny, case, wrapped_before):
    arguments, error, message = BAD_WRAPS[case]
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    if wrapped_before:
        vtr.wrap(model, "divprune", budget=8)
    model(**inputs)  # transformers installs its output recorders on the first call: before the snapshot
    expected = model.generate(**inputs, **GREEDY).sequences
    before = _snapshot(model, inputs)
    with pytest.raises(error, match=message):
        vtr.wrap(model, **arguments)
    _assert_unchanged(model, inputs, before)
    assert vtr.is_wrapped(model) == wrapped_before
    assert torch.equal(model.generate(**inputs, **GREEDY).sequences, expected)  # no unwrap needed
    vtr.wrap(model, "random", budget=8, seed=1)  # and a valid wrap still works
    model.generate(**inputs, **GREEDY)
    assert vtr.stats(model).samples[0].visual_after == 8
