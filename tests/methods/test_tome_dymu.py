"""ToMe and DyMU end to end on the tiny LLaVA-1.5: exact budgets, provenance, padded batches, caches, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vtr
from conftest import GREEDY, greedy_without_placeholders, make_inputs
from vtr import testing
from vtr.methods import DyMU, ToMe

THRESHOLDS = [0.6, 0.6]
CONFIGS = {
    "tome": dict(method="tome", budget=20),
    "tome_vtu": dict(method="tome", r=12, vtu=True),
    "dymu": dict(method="dymu", thresholds=THRESHOLDS),
    "dymu_no_vtu": dict(method="dymu", thresholds=THRESHOLDS, vtu=False),
    "tome_fastv": dict(method=["tome", "fastv"], budget=0.5, layer=2),
}
TEXTS = ["what ?", "describe this picture please , what is in it ?"]


def flat_image() -> Image.Image:
    return Image.new("RGB", (32, 32), (120, 30, 200))


def noise_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _inputs(processor, images, texts):
    prompts = [testing.prompt(processor, text) for text in texts]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("budget, expected", [(20, 20), (0.5, 32), (17, 17)])
def test_tome_budget_is_met_exactly(tiny, budget, expected):
    model, processor = tiny("llava")
    vtr.wrap(model, "tome", budget=budget)
    model.generate(**make_inputs(processor, "llava"), max_new_tokens=2)
    (item,) = vtr.stats(model).samples[0].items
    assert (item.before, item.content_after, item.stage) == (64, expected, "vision")
    assert item.vision_per_layer[0] == 65 and item.vision_per_layer[-1] == expected + 1  # + the class token


def test_tome_r_merges_r_tokens_per_layer_up_to_the_feature_layer(tiny):
    model, processor = tiny("llava")
    vtr.wrap(model, "tome", r=10)
    model(**make_inputs(processor, "llava"))
    (item,) = vtr.stats(model).samples[0].items
    assert item.vision_per_layer == (65, 55, 45)  # merges after layers 0 and 1; layer 2 is past the features
    assert item.content_after == 44


def test_provenance_and_order(tiny):
    """Each LLM token takes the slot of its surviving patch, in raster order, and stands for its members."""
    model, processor = tiny("llava")
    vtr.wrap(model, "dymu", thresholds=THRESHOLDS, vtu=False)
    inputs = make_inputs(processor, "llava")
    with torch.no_grad():
        out = model(**inputs)
    (item,) = vtr.stats(model).samples[0].items
    provenance = torch.tensor(item.provenance)
    assert provenance.shape == (64,) and set(provenance.tolist()) == set(range(item.content_after))
    image_cols = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    kept_cols = [c for c in out.vtr_kept_index[0].tolist() if c in set(image_cols.tolist())]
    kept_slots = [image_cols.tolist().index(c) for c in kept_cols]
    assert kept_slots == sorted(kept_slots) and len(kept_slots) == item.content_after
    assert all(int(provenance[slot]) == j for j, slot in enumerate(kept_slots))  # a slot of its own group


def test_dymu_merges_a_flat_image_more_than_noise(tiny):
    model, processor = tiny("llava")
    vtr.wrap(model, "dymu", thresholds=THRESHOLDS)
    model(**_inputs(processor, [flat_image(), noise_image()], TEXTS))
    flat, noise = (s.items[0].content_after for s in vtr.stats(model).samples)
    assert flat < noise < 64


def _assert_same_greedy(a, b, row_a, row_b) -> None:
    """Same new tokens, and same scores within 1e-5, for rows ``row_a`` of ``a`` and ``row_b`` of ``b``."""
    n_new = GREEDY["max_new_tokens"]
    assert torch.equal(a.sequences[row_a, -n_new:], b.sequences[row_b, -n_new:])
    for step_a, step_b in zip(a.scores, b.scores):
        torch.testing.assert_close(step_a[row_a], step_b[row_b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_padded_batch_equals_rows_alone_and_cached_equals_uncached(tiny, config):
    model, processor = tiny("llava")
    images = [flat_image(), noise_image()]
    batch = _inputs(processor, images, TEXTS)
    assert (batch["attention_mask"] == 0).any(), "the test needs left padding"
    vtr.wrap(model, **CONFIGS[config])
    greedy = greedy_without_placeholders(model)
    together = model.generate(**batch, **greedy)
    counts = [s.visual_after for s in vtr.stats(model).samples]
    _assert_same_greedy(together, model.generate(**batch, **greedy, use_cache=False), slice(None), slice(None))
    for row, (image, text) in enumerate(zip(images, TEXTS)):
        alone = model.generate(**_inputs(processor, [image], [text]), **greedy)
        assert vtr.stats(model).samples[0].visual_after == counts[row]
        _assert_same_greedy(together, alone, row, 0)
    if config.startswith("dymu"):
        assert counts[0] != counts[1], "the encoder batch needs rows of different lengths"


def test_dymu_reads_thresholds_from_a_file(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"target_removed": 8, "thresholds": [0.7, 0.65, 0.9]}))
    assert DyMU(thresholds=str(path)).values == (0.7, 0.65, 0.9)
    assert DyMU(thresholds=path).describe() == f"dymu(vtu=True, thresholds={path})"
    with pytest.raises(ValueError, match="could not read thresholds"):
        DyMU(thresholds=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="dymu needs thresholds"):
        DyMU()


def test_option_errors(tiny):
    with pytest.raises(ValueError, match="either r .* or budget"):
        ToMe(r=4, budget=16)
    with pytest.raises(ValueError, match="either r .* or budget"):
        vtr.methods.make_method("tome")
    with pytest.raises(ValueError, match="does not take a budget"):
        vtr.methods.make_method("dymu", 16, thresholds=[0.5])
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="5 thresholds.*after 2 layers .* of 3"):  # at wrap, not on a call
        vtr.wrap(model, "dymu", thresholds=[0.5] * 5)
    assert not vtr.is_wrapped(model)
    with pytest.raises(ValueError, match="pre-LLM method divprune is not supported"):
        vtr.wrap(model, ["tome", "divprune"], budget=8)
    with pytest.raises(ValueError, match="vtu=True .* in-LLM method .fastv"):
        vtr.wrap(model, ["dymu", "fastv"], thresholds=THRESHOLDS, budget=0.5)
    with pytest.raises(ValueError, match="positions='compact'"):
        vtr.wrap(model, "dymu", thresholds=THRESHOLDS, positions="compact")


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_the_qwen_family_says_why_it_cannot_merge(tiny, name):
    model, _ = tiny(name)
    with pytest.raises(vtr.ReductionError, match=f"CLIP/SigLIP towers .* not on {name}: the Qwen ViT's patch merger"):
        vtr.wrap(model, "tome", budget=16)
    assert not vtr.is_wrapped(model)


@pytest.mark.parametrize("method", ["tome", "dymu"])
def test_internvl_says_why_it_cannot_merge(tiny, method):
    model, _ = tiny("internvl")
    options = dict(thresholds=THRESHOLDS) if method == "dymu" else dict(budget=16)
    with pytest.raises(vtr.ReductionError, match="not run on internvl: its pixel shuffle concatenates"):
        vtr.wrap(model, method, **options)
    assert not vtr.is_wrapped(model)
