"""The Qwen adapter on the families it gained last: Qwen3.5 (hybrid GatedDeltaNet / gated full attention),
Qwen3.5-MoE and Qwen3-VL-MoE, and the re-wrap of a model whose decoder vtr patches (Qwen3-VL's deepstack).

Adding these types to conftest's MODELS would run every invariant test of the suite on three more models;
instead each invariant runs here once per type with one representative method per group: a pre-LLM
selection (divprune), a merge with PPE positions (pool), an attention-guided selection (hiprune), HoliTom on
video, and an in-LLM method (fastv) at a layer whose scores come from a full-attention layer; the in-LLM and
video cases run on one stack of each kind (``STACKS``).
"""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import GREEDY, greedy_without_placeholders, make_inputs, padded_inputs, row_alone

NEW = ["qwen3_5", "qwen3_5_moe", "qwen3_vl_moe"]
# layer 2 (linear attention) scores with layer 1 (full attention) on the tiny hybrid stacks
FASTV = dict(method="fastv", budget=0.5, layer=2)


@pytest.fixture(scope="module")
def built():
    """One (model, processor) per type for the module: every test leaves the model unwrapped."""
    from vtr import testing

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = testing.build(name)
        return cache[name]

    yield get
    for model, _ in cache.values():
        assert not vtr.is_wrapped(model)


def _generate(model, inputs):
    return model.generate(**inputs, **greedy_without_placeholders(model))


def _same(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


@pytest.mark.parametrize("name,kind", [(n, "image") for n in NEW] + [(n, "video") for n in NEW])
def test_keep_all_before_and_inside_the_llm_is_bit_identical(built, name, kind):
    model, processor = built(name)
    inputs = padded_inputs(processor, name) if kind == "image" else make_inputs(processor, name, kind)
    expected = _generate(model, inputs)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    with vtr.reduced(model, ["divprune", "fastv"], budget=1.0, layer=2):
        got = _generate(model, inputs)
        with torch.no_grad():
            got_logits = model(**inputs).logits
    assert _same(got, expected)
    assert torch.equal(got_logits, expected_logits)


def _hand_pruned_logits(model, inputs, kind: str, kept_index: torch.Tensor) -> torch.Tensor:
    """The unwrapped model on the kept columns only, the kept visual tokens' features (and deepstack
    features) handed in through ``mm_encoder_outputs``, every column at its original position."""
    pixels, grid = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos",
                                                                                "video_grid_thw")
    with torch.no_grad():
        encoded = getattr(model.model, f"get_{kind}_features")(inputs[pixels], inputs[grid], return_dict=True)
    token = getattr(model.config, f"{kind}_token_id")
    (columns,) = kept_index.tolist()
    visual_columns = (inputs["input_ids"][0] == token).nonzero().flatten().tolist()
    rank = torch.tensor([visual_columns.index(c) for c in columns if c in visual_columns])
    features = torch.cat(list(encoded.pooler_output))
    encoded.pooler_output = (features[rank],)
    if getattr(encoded, "deepstack_features", None) is not None:
        encoded.deepstack_features = [(torch.cat(list(layer))[rank],) for layer in encoded.deepstack_features]
    text = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    positions = model._prepare_position_ids_for_generation(inputs["input_ids"], {**text, grid: inputs[grid]})
    kept = {k: v[:, columns] for k, v in text.items()}
    with torch.no_grad():
        return type(model).forward(model, **kept, position_ids=positions[..., columns],
                                   mm_encoder_outputs={kind: encoded}).logits


@pytest.mark.parametrize("name,kind", [(n, "image") for n in NEW] + [("qwen3_5", "video")])
def test_pruning_equals_a_hand_written_pre_llm_prune(built, name, kind):
    """Masking dropped keys is no reference for linear-attention layers (their state would still see the
    tokens): the reference is the model given only the kept tokens."""
    model, processor = built(name)
    inputs = make_inputs(processor, name, kind)
    with vtr.reduced(model, "divprune", budget=0.3), torch.no_grad():
        out = model(**inputs)
    reference = _hand_pruned_logits(model, inputs, kind, out.vtr_kept_index)
    assert out.logits.shape[1] < inputs["input_ids"].shape[1]
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)


# the in-LLM and video cases on one hybrid and one deepstack stack: qwen3_5_moe's layers are qwen3_5's with
# another feed-forward (it still runs the pre-LLM cases, keep-all, exact pruning and a padded batch)
STACKS = ["qwen3_5", "qwen3_vl_moe"]
CACHED_CASES = [(n, "image", "pool_ppe") for n in NEW] + [(n, "image", "fastv") for n in STACKS] + \
    [(n, "video", "holitom") for n in STACKS] + \
    [("qwen3_5", "image", c) for c in ("hiprune", "random", "divprune", "visionzip", "pdrop", "holitom_inner")] + \
    [("qwen3_5", "video", "divprune")]
# pdrop's stages at layers 2 (scored at full-attention layer 1) and 3 (a full-attention layer, its own scores)
CONFIGS = {"pool_ppe": dict(method="pool", budget=4, positions="ppe"), "fastv": FASTV,
           "holitom": dict(method="holitom", budget=0.3), "hiprune": dict(method="hiprune", budget=0.3),
           "random": dict(method="random", budget=0.3), "divprune": dict(method="divprune", budget=0.3),
           "visionzip": dict(method="visionzip", budget=0.3), "pdrop": dict(method="pdrop", layers=(2, 3), ratio=0.5),
           "holitom_inner": dict(method="holitom_inner", budget=0.5, layer=2)}


@pytest.mark.parametrize("name,kind,config", CACHED_CASES)
def test_cached_generate_equals_uncached_recompute(built, name, kind, config):
    model, processor = built(name)
    inputs = padded_inputs(processor, name) if kind == "image" else make_inputs(processor, name, kind)
    with vtr.reduced(model, **CONFIGS[config]):
        cached = _generate(model, inputs)
        before = [s.visual_before for s in vtr.stats(model).samples]
        after = [s.visual_after for s in vtr.stats(model).samples]
        per_layer = [s.visual_per_layer for s in vtr.stats(model).samples]
        uncached = model.generate(**inputs, **greedy_without_placeholders(model), use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if config in ("fastv", "pdrop", "holitom_inner"):
        assert all(p[-1] < p[0] for p in per_layer)
    else:
        assert all(a < b for a, b in zip(after, before))


@pytest.mark.parametrize("name,config", [(n, c) for n in STACKS for c in ("divprune", "fastv")] +
                         [("qwen3_5_moe", "divprune")])
def test_padded_batch_equals_rows_alone(built, name, config):
    """Linear-attention states are per row: left padding and pad slots must never reach them."""
    model, processor = built(name)
    inputs = padded_inputs(processor, name)
    options = dict(method="divprune", budget=0.3) if config == "divprune" else FASTV
    with vtr.reduced(model, **options):
        batch = _generate(model, inputs)
        new = batch.sequences[:, inputs["input_ids"].shape[1]:]
        for i in range(2):
            alone = _generate(model, row_alone(inputs, i))
            assert torch.equal(alone.sequences[0, -new.shape[1]:], new[i])
            for step_batch, step_alone in zip(batch.scores, alone.scores):
                torch.testing.assert_close(step_batch[i], step_alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["qwen3_vl"] + STACKS)
def test_rewrap_and_unwrap_restore_exactly(built, name):
    """A re-wrap installs its decoder patch before the replaced wrap's undo runs: that undo must not take the
    new patch along (Qwen3-VL's deepstack injection then met a shortened sequence and crashed)."""
    from vtr import testing

    model, processor = built(name) if name in NEW else testing.build(name)
    inputs = make_inputs(processor, name)
    expected = model.generate(**inputs, **GREEDY)
    layer = dict(layer=1) if name == "qwen3_vl" else dict(layer=2)
    vtr.wrap(model, "fastv", budget=0.5, **layer)
    first = model.generate(**inputs, **GREEDY)
    vtr.wrap(model, "fastv", budget=0.5, **layer)  # the same configuration again, without unwrapping
    assert _same(model.generate(**inputs, **GREEDY), first)
    vtr.unwrap(model)
    vtr.wrap(model, "fastv", budget=0.5, **layer)
    assert _same(model.generate(**inputs, **GREEDY), first)
    vtr.unwrap(model)
    assert set(model.model.language_model.__dict__) & {"_deepstack_process"} == set()
    assert _same(model.generate(**inputs, **GREEDY), expected)


def test_a_pruning_layer_without_a_full_attention_layer_before_it_is_refused(built):
    model, _ = built("qwen3_5")
    with pytest.raises(ValueError, match=r"layers 0\.\.0 are all recurrent .*full-attention layer \(layers \[1, 3\]\)"):
        vtr.wrap(model, "fastv", budget=0.5, layer=1)
    with pytest.raises(ValueError, match="layer 2 prunes in between"):
        vtr.wrap(model, "pdrop", layers=(2, 3), score_layer="previous")
    assert not vtr.is_wrapped(model)


def test_vision_encoder_merging_is_refused_as_on_qwen3_vl(built):
    model, _ = built("qwen3_5")
    with pytest.raises(vtr.errors.ReductionError, match="patch merger"):
        vtr.wrap(model, "tome", budget=0.5)
    assert not vtr.is_wrapped(model)
