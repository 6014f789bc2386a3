"""Multi-turn chat on the KV cache a reduced generate() filled: a later turn equals an uncached recompute of
the whole conversation that keeps the first turn's reduction."""

from __future__ import annotations

import warnings
import pytest
import torch

import vtr
from conftest import MODELS, make_inputs, padded_inputs
from vtr import testing
from vtr.methods.fastv import FastV
from vtr.methods.layer import LayerInput, LayerOutput

FOLLOW_UP = "and what is left of it ?"


def _greedy(model) -> dict:
    """Four new tokens per turn (never EOS early, never a placeholder), scores kept for comparison."""
    placeholders = [getattr(model.config, f"{m}_token_id", None) for m in ("image", "video")]
    return dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                output_scores=True, suppress_tokens=[t for t in placeholders if t is not None])


def _follow_up(rows: int) -> torch.Tensor:
    ids = testing.tokenizer()(FOLLOW_UP, return_tensors="pt", add_special_tokens=False).input_ids
    return ids.expand(rows, -1)


def _next_turn(first, previous_ids_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids / attention_mask of the next turn: the conversation so far plus the follow-up question."""
    follow = _follow_up(first.sequences.shape[0])
    ids = torch.cat([first.sequences, follow], 1)
    generated = first.sequences.shape[1] - previous_ids_mask.shape[1] + follow.shape[1]
    return ids, torch.cat([previous_ids_mask, torch.ones(ids.shape[0], generated, dtype=torch.long)], 1)


def _whole_conversation(inputs, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """The processor's pixel inputs with the whole conversation as the prompt (text after the prompt is
    text: token type 0)."""
    whole = {**inputs, "input_ids": ids, "attention_mask": mask}
    for key in ("mm_token_type_ids", "token_type_ids"):  # Gemma 3's processor names them token_type_ids
        if key in inputs:
            types = inputs[key]
            whole[key] = torch.cat([types, types.new_zeros(ids.shape[0], ids.shape[1] - types.shape[1])], 1)
    return whole


def _chat(model, inputs, turns: int = 2):
    """``turns`` turns, each passing the previous one's cache back; returns the last output, its inputs and
    the in-LLM stage's choice in the first turn (the model's columns of what it kept, -1 on pad slots)."""
    greedy = _greedy(model)
    out = model.generate(**inputs, **greedy)
    first_stats = vtr.stats(model)
    pruner = model._vtr_state.pipeline.in_llm
    chosen = None if pruner is None else pruner.run.final_index()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(turns - 1):
        ids, mask = _next_turn(out, mask)
        out = model.generate(input_ids=ids, attention_mask=mask, cache=out.past_key_values, **greedy)
        assert vtr.stats(model) == first_stats  # a later turn reports the reduction its cache holds
    return out, ids, mask, chosen


def _assert_same_answer(got, expected) -> None:
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS + ["gemma3", "gemma4"])
def test_pre_llm_later_turn_equals_a_fresh_reduced_recompute(tiny, name):
    """DivPrune does not read the prompt: the recompute that keeps turn 1's reduction is the fresh one."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, "divprune", budget=6)
    second, ids, mask, _ = _chat(model, inputs)
    assert all(s.visual_after < s.visual_before for s in vtr.stats(model).samples)
    fresh = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(second, fresh)


def _replay(chosen: torch.Tensor, **options) -> FastV:
    """FastV keeping the columns ``chosen`` (B, N) at its layer, whatever the prompt: the first turn's choice
    (-1: a pad slot)."""

    class Replay(FastV):
        def select(self, step: LayerInput) -> LayerOutput:
            keep = torch.zeros_like(step.group, dtype=torch.bool)
            keep.scatter_(1, chosen.to(keep.device).clamp_min(0), True)  # only candidate columns are read
            return LayerOutput(keep)

    return Replay(**options)


@pytest.mark.parametrize("name", MODELS + ["gemma3"])
def test_in_llm_later_turn_keeps_the_first_turns_choice(tiny, name):
    """FastV's choice reads the prompt's last token; the cache keeps turn 1's, and so does the reference."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, "fastv", budget=5, layer=2)
    second, ids, mask, chosen = _chat(model, inputs)
    per_layer = vtr.stats(model).samples[0].visual_per_layer
    assert per_layer[-1] < per_layer[0]
    vtr.wrap(model, _replay(chosen, budget=5, layer=2))
    replayed = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(second, replayed)


@pytest.mark.parametrize("name,vtu", [("llava", True), ("llava_next", False)])
def test_vision_stage_later_turn_equals_a_fresh_reduced_recompute(tiny, name, vtu):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, "tome", budget=0.5, vtu=vtu)
    second, ids, mask, _ = _chat(model, inputs)
    fresh = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(second, fresh)


@pytest.mark.parametrize("name,positions", [("llava", "ppe"), ("qwen2_vl", "compact"), ("qwen2_5_vl", "original")])
def test_third_turn_of_a_padded_batch_with_two_stages(tiny, name, positions):
    """Left padding, a pre-LLM and an in-LLM stage, three turns: each later turn continues the cache."""
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    vtr.wrap(model, ["divprune", "fastv"], budget=6, layer=2, positions=positions)
    third, ids, mask, chosen = _chat(model, inputs, turns=3)
    vtr.wrap(model, ["divprune", _replay(chosen, budget=6, layer=2)],
             budget=6, positions=positions)
    replayed = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(third, replayed)


def test_the_deprecated_past_key_values_keyword_works_too(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, "divprune", budget=6)
    first = model.generate(**inputs, **_greedy(model))
    ids, mask = _next_turn(first, inputs["attention_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        second = model.generate(input_ids=ids, attention_mask=mask, past_key_values=first.past_key_values,
                                **_greedy(model))
    fresh = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(second, fresh)


def _first_turn(tiny, method="divprune", **options):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, method, **options)
    first = model.generate(**inputs, **_greedy(model))
    return model, inputs, first


def test_pixels_with_a_filled_cache_are_refused_and_a_valid_turn_still_works(tiny):
    model, inputs, first = _first_turn(tiny, budget=6)
    ids, mask = _next_turn(first, inputs["attention_mask"])
    with pytest.raises(vtr.ReductionError, match="on later turns pass no pixels"):
        model.generate(**_whole_conversation(inputs, ids, mask), cache=first.past_key_values, **_greedy(model))
    second = model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values, **_greedy(model))
    fresh = model.generate(**_whole_conversation(inputs, ids, mask), **_greedy(model), use_cache=False)
    _assert_same_answer(second, fresh)


def test_a_cache_passed_with_another_conversation_is_refused(tiny):
    model, inputs, first = _first_turn(tiny, budget=6)
    ids, mask = _next_turn(first, inputs["attention_mask"])
    ids = ids.clone()
    ids[0, 1] = testing.token_id("dog")
    with pytest.raises(vtr.ReductionError, match="cat\\(previous_output.sequences, new_tokens\\)"):
        model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values, **_greedy(model))


def test_input_ids_the_cache_already_holds_are_refused(tiny):
    model, inputs, first = _first_turn(tiny, budget=6)
    ids = first.sequences[:, :-1]  # the cache holds every token but the last generated one
    with pytest.raises(vtr.ReductionError, match="with at least one new token"):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), cache=first.past_key_values,
                       **_greedy(model))


def test_position_ids_on_a_later_turn_are_refused(tiny):
    model, inputs, first = _first_turn(tiny, budget=6)
    ids, mask = _next_turn(first, inputs["attention_mask"])
    with pytest.raises(vtr.ReductionError, match="do not pass position_ids"):
        model.generate(input_ids=ids, attention_mask=mask, position_ids=mask.cumsum(1) - 1,
                       cache=first.past_key_values, **_greedy(model))


def test_rewrapping_between_turns_of_an_in_llm_cache_is_refused(tiny):
    model, inputs, first = _first_turn(tiny, "fastv", budget=5)
    ids, mask = _next_turn(first, inputs["attention_mask"])
    vtr.wrap(model, "pdrop", budget=5)
    with pytest.raises(vtr.ReductionError, match="Finish the conversation before re-wrapping"):
        model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values, **_greedy(model))


def test_interleaved_conversations_each_continue_their_own_cache(tiny):
    """Another conversation's call between two turns does not leak into this one's in-LLM stage."""
    model, processor = tiny("llava")
    inputs, other = make_inputs(processor, "llava"), make_inputs(processor, "llava", seeds=(7,))
    vtr.wrap(model, "fastv", budget=5, layer=2)
    alone, _, _, _ = _chat(model, inputs)
    first = model.generate(**inputs, **_greedy(model))
    model.generate(**other, **_greedy(model))  # another conversation's first turn
    ids, mask = _next_turn(first, inputs["attention_mask"])
    _assert_same_answer(model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values,
                                       **_greedy(model)), alone)
