"""The shipped tiny LLaVA: loads offline, sees (keep-all accuracy), and is token-sensitive (random pruning hurts)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import vtr
from vtr.assets import TINY_LLAVA_SYNTH, tiny_llava_synth
from vtr.eval import accuracy, synthetic

HELD_OUT = 200


@pytest.fixture(scope="module")
def trained():
    """(model, processor, items, batches): the 200 held-out test samples encoded once for every test."""
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_synth(), local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_synth(), local_files_only=True)
    items = synthetic.samples("test", HELD_OUT)
    return model, processor, items, accuracy.encode(processor, items, batch_size=HELD_OUT)


def test_the_checkpoint_is_small_and_loads_offline(trained):
    model, processor, items, batches = trained
    assert (TINY_LLAVA_SYNTH / "model.safetensors").stat().st_size <= 20 * 2**20
    assert model.config.model_type == "llava" and model.dtype == torch.float32
    # 112 px at 8 px patches: 196 visual tokens per image, each answer one token of the word-level tokenizer
    assert int((batches[0]["input_ids"][0] == model.config.image_token_id).sum()) == 196
    assert all(len(processor.tokenizer.tokenize(answer)) == 1 for answer in synthetic.ANSWERS)


def test_keep_all_accuracy_on_held_out_samples(trained):
    model, processor, items, batches = trained
    score = accuracy.score(model, processor, items, batches)
    assert score.visual_llm_input == score.visual_last_layer == 196
    assert score.accuracy >= 0.90


def test_keep_all_answers_every_question_type(trained):
    """No question type is left to the prior: colour, shape, count, left/right and presence are all learned."""
    model, processor, items, batches = trained
    score = accuracy.score(model, processor, items, batches)
    for question_type in synthetic.QUESTION_TYPES:
        answers = [ok for item, ok in zip(items, score.correct) if item.question_type == question_type]
        assert answers and sum(answers) / len(answers) >= 0.80, question_type


def test_random_pruning_at_11_percent_loses_at_least_10_points(trained):
    model, processor, items, batches = trained
    keep_all = accuracy.score(model, processor, items, batches).accuracy
    with vtr.reduced(model, "random", budget=0.11):
        pruned = accuracy.score(model, processor, items, batches)
    assert pruned.visual_llm_input == 22  # round(0.11 * 196)
    assert keep_all - pruned.accuracy >= 0.10


def test_calibrated_dymu_thresholds_are_shipped_next_to_it():
    """`vtr calibrate` records (scripts/calibrate_tiny.py): one threshold per merging layer of its 4-layer
    CLIP, stricter as fewer tokens are merged; the demo's accuracy test runs DyMU with them."""
    import json

    from vtr.assets import dymu_thresholds, shipped_dymu_levels

    assert shipped_dymu_levels() == [8, 16, 32] and dymu_thresholds(5) is None
    records = [json.loads(dymu_thresholds(level).read_text()) for level in shipped_dymu_levels()]
    assert [r["target_removed"] for r in records] == [8, 16, 32]
    assert all(r["model"] == "tiny-llava-synth" and len(r["thresholds"]) == 4 for r in records)
    for fewer, more in zip(records, records[1:]):  # merging more tokens needs lower thresholds, layer by layer
        assert all(a > b for a, b in zip(fewer["thresholds"], more["thresholds"]))
    assert vtr.methods.DyMU(thresholds=str(dymu_thresholds(8))).values == tuple(records[0]["thresholds"])
