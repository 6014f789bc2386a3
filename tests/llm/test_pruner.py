"""The layer-K engine end to end: exact KV cache, padding, cache lengths, and the masked-keys reference."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import StaticCache

import vtr
from conftest import (GREEDY, check_batch_equals_rows_alone, check_cached_equals_uncached, greedy_without_placeholders,
                      image_for, make_inputs, padded_inputs, row_alone)
from vtr import testing
from vtr.llm.cache import cache_keyword
from vtr.methods import DivPrune, FastV, PDrop
from vtr.methods.layer import LayerOutput

FAMILIES = ["llava", "qwen2_5_vl", "qwen3_vl", "internvl_qwen3"]
# Gemma 3 and 4 (sliding-window and global layers, a bidirectional image block, per-layer-type rotary; Gemma 4's
# per-layer input embeddings) cost most per forward: every in-LLM method under SDPA (eager's float masks once,
# with fastv), keep-all with fastv
GEMMAS = ["gemma3", "gemma4"]
IN_LLM = {
    "fastv": dict(method="fastv", budget=0.5, layer=2),
    "pdrop": dict(method="pdrop"),
    "holitom_inner": dict(method="holitom_inner"),
    "fastv_in_deepstack": dict(method="fastv", budget=5, layer=1, query="text"),
}
@pytest.mark.parametrize("name, attention, config",
                         [(n, a, c) for c in IN_LLM for a in ("sdpa", "eager") for n in FAMILIES]
                         + [(g, "sdpa", c) for c in IN_LLM for g in GEMMAS] + [(g, "eager", "fastv") for g in GEMMAS])
def test_cached_generate_equals_uncached_recompute(tiny, name, attention, config):
    model, processor = tiny(name)
    model.set_attn_implementation(attention)
    inputs = padded_inputs(processor, name)
    vtr.wrap(model, **IN_LLM[config])
    cached = model.generate(**inputs, **greedy_without_placeholders(model))
    per_layer = [s.visual_per_layer for s in vtr.stats(model).samples]
    uncached = model.generate(**inputs, **greedy_without_placeholders(model), use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        assert torch.allclose(a, b, atol=1e-5)
    assert [s.visual_per_layer for s in vtr.stats(model).samples] == per_layer
    assert all(p[-1] < p[0] for p in per_layer)  # the stage did drop tokens


@pytest.mark.parametrize("name, config", [(n, c) for c in ("fastv", "pdrop", "holitom_inner") for n in FAMILIES]
                         + [(g, c) for c in ("fastv", "pdrop", "holitom_inner") for g in GEMMAS])
def test_padded_batch_equals_rows_alone(tiny, name, config):
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    vtr.wrap(model, **IN_LLM[config])
    batch = model.generate(**inputs, **greedy_without_placeholders(model))
    new = batch.sequences[:, inputs["input_ids"].shape[1]:]
    for i in range(2):
        alone = model.generate(**row_alone(inputs, i), **greedy_without_placeholders(model))
        assert torch.equal(alone.sequences[0, -new.shape[1]:], new[i])
        for step_batch, step_alone in zip(batch.scores, alone.scores):
            assert torch.allclose(step_batch[i], step_alone[0], atol=1e-5)


def _image_row_and_shorter_text_row(processor, name: str, shorter_by: int = 3) -> tuple[dict, dict, dict]:
    """(batch, image row alone, text row alone): an image prompt and a text-only prompt ``shorter_by`` tokens
    shorter, so only the text row is left-padded before the LLM."""
    image_prompt = testing.prompt(processor, "what is in the image ?")
    image_alone = processor(images=[image_for(name)], text=[image_prompt], return_tensors="pt")
    target = image_alone["input_ids"].shape[1] - shorter_by
    words = 1
    while len(processor(text=[testing.prompt(processor, "the " * words, images=0)])["input_ids"][0]) < target:
        words += 1
    text_prompt = testing.prompt(processor, "the " * words, images=0)
    text_alone = processor(text=[text_prompt], return_tensors="pt")
    assert text_alone["input_ids"].shape[1] == target  # one token per word: exactly shorter_by shorter
    batch = processor(images=[image_for(name)], text=[image_prompt, text_prompt], return_tensors="pt", padding=True)
    assert batch["attention_mask"][0].all() and int((batch["attention_mask"][1] == 0).sum()) == shorter_by
    return batch, image_alone, text_alone


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_multi_stage_padding_when_the_unpadded_row_becomes_the_shorter_one(tiny, name):
    """PDrop's first stage makes the image row (no padding before the LLM) shorter than the left-padded text
    row, so the image row gets pad slots; later stages must keep them out (letting an earlier stage's pad
    slots back in changes the image row, and only that row)."""
    model, processor = tiny(name)
    batch, image_alone, text_alone = _image_row_and_shorter_text_row(processor, name)
    vtr.wrap(model, "pdrop")
    greedy = greedy_without_placeholders(model)
    together = model.generate(**batch, **greedy)
    per_layer = vtr.stats(model).samples[0].visual_per_layer
    first, *later = PDrop().prune_layers(len(per_layer))
    # the premise: the first stage drops more than the text row's padding, and later stages drop more
    assert per_layer[0] - per_layer[first] > 3 and later and per_layer[later[-1]] < per_layer[first]
    new = together.sequences[:, batch["input_ids"].shape[1]:]
    for row, alone_inputs in enumerate((image_alone, text_alone)):
        alone = model.generate(**alone_inputs, **greedy)
        assert torch.equal(alone.sequences[0, alone_inputs["input_ids"].shape[1]:], new[row]), row
        for step_batch, step_alone in zip(together.scores, alone.scores):
            assert torch.allclose(step_batch[row], step_alone[0], atol=1e-5), row


@pytest.mark.parametrize("name", FAMILIES + GEMMAS)
def test_cache_holds_the_reduced_length_from_layer_k_on(tiny, name):
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    vtr.wrap(model, "pdrop", layers=(1, 3), ratio=0.5)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    per_layer = [s.visual_per_layer for s in vtr.stats(model).samples]
    full = cache.get_seq_length(0)
    assert full == inputs["input_ids"].shape[1] + 2  # the prompt + every fed new token
    for layer in range(1, 4):
        dropped = [p[0] - p[layer] for p in per_layer]
        # rows of a batch share one length: the row that dropped least sets it (others get pad slots)
        assert cache.get_seq_length(layer) == full - min(dropped), layer
    assert cache.get_seq_length(1) > cache.get_seq_length(3)


@pytest.mark.parametrize("name, method", [(n, m) for m in ("fastv", "holitom_inner", "pdrop")
                                          for n in FAMILIES + ["llava_next"]] + [(g, "fastv") for g in GEMMAS])
def test_keep_all_at_layer_k_is_identical_to_unwrapped(tiny, name, method):
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    expected = model.generate(**inputs, **greedy_without_placeholders(model))
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    options = dict(ratio=1.0) if method == "pdrop" else dict(budget=1.0)
    with vtr.reduced(model, method, **options):
        got = model.generate(**inputs, **greedy_without_placeholders(model))
        with torch.no_grad():
            got_logits = model(**inputs).logits
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    assert torch.equal(got_logits, expected_logits)


def _masked_keys_reference(model, inputs, first_layer: int, dropped: torch.Tensor) -> torch.Tensor:
    """Logits of the unwrapped eager model with ``dropped`` (B, L) columns masked as keys from
    ``first_layer`` on: what pruning at that layer means, computed without removing anything."""
    handles = []

    def mask_keys(module, args, kwargs):
        mask = kwargs["attention_mask"]
        blocked = dropped.view(dropped.shape[0], 1, 1, -1)
        return args, {**kwargs, "attention_mask": mask.masked_fill(blocked, torch.finfo(mask.dtype).min)}

    for layer in model.model.language_model.layers[first_layer:]:
        handles.append(layer.register_forward_pre_hook(mask_keys, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", FAMILIES + GEMMAS)
@pytest.mark.parametrize("layer", [1, 2])
def test_prefill_logits_equal_dropped_tokens_masked_as_keys(tiny, name, layer):
    model, processor = tiny(name)
    model.set_attn_implementation("eager")
    inputs = padded_inputs(processor, name)
    with vtr.reduced(model, "fastv", budget=0.3, layer=layer):
        with torch.no_grad():
            out = model(**inputs)
    _assert_masked_keys_reference(model, inputs, out, layer)


def _assert_masked_keys_reference(model, inputs, out, layer: int) -> None:
    """The reduced forward's logits ``out`` equal the unwrapped model's with the dropped columns masked as keys
    from ``layer`` on."""
    kept = out.vtr_kept_index  # input column of every output column, -1 on pad slots
    dropped = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    for row in range(kept.shape[0]):
        dropped[row, kept[row][kept[row] >= 0]] = False
    dropped &= inputs["attention_mask"].bool()  # padding stays as the model masks it
    assert dropped.any()
    reference = _masked_keys_reference(model, inputs, layer, dropped)
    valid = kept >= 0
    real = inputs["attention_mask"].bool().gather(1, kept.clamp_min(0)) & valid
    got = out.logits[real]
    expected = reference.gather(1, kept.clamp_min(0).unsqueeze(-1).expand(-1, -1, reference.shape[-1]))[real]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method, options", [("fastv", dict(budget=0.3, layer=2)),
                                             ("pdrop", dict(layers=(1, 2), renumber=False))])
def test_gemma4_kv_sharing_layers_attend_the_kept_keys(method, options):
    """Gemma 4's KV-sharing layers (4 and 5 here) reuse the keys layers 2 and 3 computed on the kept tokens, and
    in generate transformers runs them on the prompt's last token only: a prune at layer K <= 2 equals masking
    the dropped keys from K on, and generate is cached == uncached and padded == alone."""
    model, processor = testing.build_gemma4(**testing.GEMMA4_KV_SHARING)
    inputs = padded_inputs(processor, "gemma4")
    greedy = greedy_without_placeholders(model, **GREEDY, min_new_tokens=GREEDY["max_new_tokens"])  # no early eos
    with vtr.reduced(model, method, **options):
        check_cached_equals_uncached(model, inputs, greedy)
        check_batch_equals_rows_alone(model, inputs, greedy)
        per_layer = vtr.stats(model).samples[0].visual_per_layer
        assert per_layer[-1] == per_layer[3] < per_layer[0]  # the sharing layers see layer 3's tokens
    if method == "fastv":
        model.set_attn_implementation("eager")
        with vtr.reduced(model, method, **options), torch.no_grad():
            out = model(**inputs)
        _assert_masked_keys_reference(model, inputs, out, options["layer"])


def test_pre_llm_and_in_llm_methods_compose(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = padded_inputs(processor, "qwen2_5_vl")
    vtr.wrap(model, [DivPrune(budget=20), FastV(budget=8, layer=2)])
    cached = model.generate(**inputs, **greedy_without_placeholders(model))
    stats = vtr.stats(model)
    assert "divprune" in stats.method and "fastv" in stats.method
    for sample in stats.samples:
        assert sample.visual_after == 20  # before the LLM
        assert sample.visual_per_layer == (20, 20, 8, 8)  # per decoder layer
    uncached = model.generate(**inputs, **greedy_without_placeholders(model), use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)


def test_shared_options_route_to_the_methods_that_have_them(tiny):
    model, _ = tiny("llava")
    vtr.wrap(model, ["random", "fastv"], budget=0.5, layer=3, seed=4)
    pipeline = model._vtr_state.pipeline
    assert pipeline.pre_llm.seed == 4 and pipeline.in_llm.method.layer == 3
    with pytest.raises(ValueError, match="no method in"):
        vtr.wrap(model, ["random", "fastv"], budget=0.5, nonsense=1)
    with pytest.raises(ValueError, match="at most one method per"):
        vtr.wrap(model, ["fastv", "pdrop"], budget=0.5)


def test_forward_with_labels_reports_the_loss_on_kept_tokens(tiny):
    model, processor = tiny("llava")
    inputs = padded_inputs(processor, "llava")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    vtr.wrap(model, "fastv", budget=0.25, layer=2)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    kept = out.vtr_kept_index
    kept_labels = labels.gather(1, kept.clamp_min(0)).masked_fill(kept < 0, -100)
    expected = model.loss_function(logits=out.logits, labels=kept_labels,
                                   vocab_size=model.config.text_config.vocab_size)
    assert torch.isfinite(out.loss) and torch.equal(out.loss, expected)
    assert out.logits.shape[1] == kept.shape[1] < inputs["input_ids"].shape[1]


def test_text_only_prompt_and_unwrap(tiny):
    model, processor = tiny("llava")
    text = make_inputs(processor, "llava", "text")
    expected = model.generate(**text, **greedy_without_placeholders(model))
    vtr.wrap(model, "fastv", budget=0.5)
    got = model.generate(**text, **greedy_without_placeholders(model))
    assert torch.equal(got.sequences, expected.sequences)
    assert any(layer._forward_pre_hooks for layer in model.model.language_model.layers)
    vtr.unwrap(model)
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert not any(layer.self_attn._forward_pre_hooks for layer in model.model.language_model.layers)


def test_manual_decoding_loop_continues_on_the_reduced_cache(tiny):
    """A forward with pixels, then cached steps by hand (no generate), gives generate's tokens; passing the
    cache under the installed transformers' keyword raises no deprecation warning."""
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, "fastv", budget=0.5, layer=2)
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        past, mask = out.past_key_values, inputs["attention_mask"]
        assert past.get_seq_length(2) < past.get_seq_length(0)
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(2):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)
                step = model(input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True,
                             **{cache_keyword(): past})
            tokens.append(step.logits[:, -1].argmax(-1))
    assert torch.equal(torch.stack(tokens, 1), expected[:, inputs["input_ids"].shape[1]:])


def _static_generation_config(model):
    config = copy.deepcopy(model.generation_config)
    config.cache_implementation = "static"
    return config


# every way a user asks for a cache whose layers all have one length: (how, what the error names)
FIXED_LENGTH = {
    "static": (lambda model: dict(cache_implementation="static"), "cache_implementation='static'"),
    # on a CPU, transformers itself raises a CUDA error for this one before any layer runs
    "offloaded_static": (lambda model: dict(cache_implementation="offloaded_static"), "'offloaded_static'"),
    "generation_config": (lambda model: dict(generation_config=_static_generation_config(model)), "'static'"),
    "passed": (lambda model: dict(past_key_values=StaticCache(config=model.config, max_cache_len=256)), "StaticCache"),
}


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("how", list(FIXED_LENGTH))
def test_a_fixed_length_cache_is_refused_at_the_call_with_the_fix(tiny, name, how):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, "pdrop")
    expected = model.generate(**inputs, **GREEDY).sequences
    ran = []  # the refusal comes before transformers runs (or allocates) anything
    handle = model.model.language_model.layers[0].register_forward_pre_hook(lambda *args: ran.append(1))
    asked, named = FIXED_LENGTH[how]
    with pytest.raises(vtr.ReductionError, match=f"dynamic KV cache .*got .*{named}.*do not pass "
                                                 f"cache_implementation='static' or a preallocated cache"):
        model.generate(**inputs, max_new_tokens=2, **asked(model))
    assert not ran
    handle.remove()
    assert torch.equal(model.generate(**inputs, **GREEDY).sequences, expected)  # still wrapped, still right


def test_a_static_cache_passed_to_forward_is_refused_before_any_layer(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, "fastv", budget=0.5)
    expected = model(**inputs).logits
    with pytest.raises(vtr.ReductionError, match="dynamic KV cache .*got a StaticCache"):
        model(**inputs, past_key_values=StaticCache(config=model.config, max_cache_len=256), use_cache=True)
    assert torch.equal(model(**inputs).logits, expected)


def test_bad_layers_and_quirk_option_are_rejected(tiny):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="within 1..3"):
        vtr.wrap(model, "fastv", budget=0.5, layer=4)
    with pytest.raises(ValueError, match="fastv layer must be an int >= 1, got 0"):  # the option's own range
        vtr.wrap(model, "fastv", budget=0.5, layer=0)
    with pytest.raises(ValueError, match="no option"):
        vtr.wrap(model, "fastv", budget=0.5, reference_quirks=True)
    assert not vtr.is_wrapped(model)


def test_reference_quirks_change_hidden_states_but_not_the_choice(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl")
    outs = {}
    for quirks in (False, True):
        with vtr.reduced(model, "holitom_inner", layer=2, reference_quirks=quirks):
            with torch.no_grad():
                outs[quirks] = model(**inputs)
    assert torch.equal(outs[False].vtr_kept_index, outs[True].vtr_kept_index)
    assert not torch.allclose(outs[False].logits, outs[True].logits)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_later_layers_and_decode_steps_reuse_the_gathered_inputs(tiny, name, monkeypatch):
    """One stage at layer 1 of 4: the prefill gathers cos/sin, positions and mask once for layers 1-3, and
    each cached step gathers its mask once, not once per layer (``_LayerInputs``)."""
    from vtr.llm import pruner

    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    calls = {"full_pass_mask": 0, "decode_mask": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    for function in calls:
        monkeypatch.setattr(pruner, function, counted(function, getattr(pruner, function)))
    vtr.wrap(model, "fastv", budget=0.5, layer=1)
    steps = 4
    model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert len(vtr.stats(model).samples[0].visual_per_layer) == 4
    assert calls == {"full_pass_mask": 1, "decode_mask": steps - 1}


class _UncountedPDrop(PDrop):
    """PDrop whose decision leaves out its counts and covers only the candidates (a method written against
    the bare protocol): the engine reads the counts of later stages back from the device instead."""

    def select(self, step):
        return LayerOutput(super().select(step).keep & (step.group >= 0))


def test_a_multi_stage_decision_without_counts_reads_them_back(tiny):
    model, processor = tiny("llava")
    inputs = padded_inputs(processor, "llava")
    with vtr.reduced(model, "pdrop"):
        expected = model.generate(**inputs, **greedy_without_placeholders(model))
        per_layer = [s.visual_per_layer for s in vtr.stats(model).samples]
    with vtr.reduced(model, _UncountedPDrop()):
        uncounted = model.generate(**inputs, **greedy_without_placeholders(model))
        assert [s.visual_per_layer for s in vtr.stats(model).samples] == per_layer
    assert torch.equal(uncounted.sequences, expected.sequences)
    assert len(set(per_layer[0])) > 2  # more than one stage dropped tokens
