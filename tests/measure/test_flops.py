"""The analytical FLOPs model against torch's FlopCounterMode, per component, on every tiny family."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import vtr
from conftest import MODELS, VIDEO_MODELS, flop_counter, greedy_without_placeholders, make_inputs
from vtr import testing
from vtr.layout import Segment
from vtr.measure.flops import (FlopsBreakdown, VisualInput, call_flops, format_breakdown,
                               model_flops, tokens_per_layer, visual_inputs)
from vtr.methods import HoliTom, VisualItem
from vtr.methods.holitom import dpc_knn_flops
from vtr.stats import ItemStats

TOLERANCE = 0.02
# Gemma 3 (not in MODELS: its forwards are costly) on images; its pdrop below
CASES = [(name, "image") for name in MODELS + ["gemma3"]] + [(name, "video") for name in VIDEO_MODELS]
# the Qwen families not in MODELS (see tests/adapters/test_qwen_vl.py): hybrid and MoE decoders, images and one video
NEW_CASES = [("qwen3_5", "image"), ("qwen3_5", "video"), ("qwen3_5_moe", "image"), ("qwen3_vl_moe", "image")]
WRAPS = {
    "plain": None,
    "divprune": dict(method="divprune", budget=0.5),
    "fastv": dict(method="fastv", budget=0.5, layer=2),
}
VISION_MODULES = ("model.vision_tower", "model.visual")
PROJECTOR_MODULES = re.compile(r"model\.(multi_modal_projector|embed_vision|vision_resampler|visual\.merger"
                               r"|visual\.deepstack_merger_list\.\d+)")


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode's SDPA formula, for the CPU flash kernel it has none for."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _counted(model, run) -> dict[str, float]:
    """Measured FLOPs of ``run()``: total, vision, projector, and the rest (LLM + vtr's own work)."""
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    with flop_counter(model, custom_mapping=custom) as counter:
        run()
    per_module = {name.partition(".")[2]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    projector = sum(v for name, v in per_module.items() if PROJECTOR_MODULES.fullmatch(name))
    vision = sum(per_module.get(name, 0) for name in VISION_MODULES)
    if "model.visual" in per_module:  # Qwen-VL's mergers live inside the vision model
        vision -= projector
    total = counter.get_total_flops()
    return dict(total=total, vision=vision, projector=projector, rest=total - vision - projector)


def _modelled(breakdown: FlopsBreakdown) -> dict[str, float]:
    return dict(total=breakdown.total, vision=breakdown.vision, projector=breakdown.projector,
                rest=breakdown.llm_prefill + breakdown.decode + breakdown.reduction)


def _assert_close(measured: dict[str, float], modelled: dict[str, float]) -> None:
    for key, value in measured.items():
        assert modelled[key] == pytest.approx(value, rel=TOLERANCE), (key, measured, modelled)


def _wrap(model, config: str):
    return model if WRAPS[config] is None else vtr.wrap(model, **WRAPS[config])


@pytest.mark.parametrize("name, kind", CASES + NEW_CASES)
def test_forward_prefill_matches_flop_counter(tiny, name, kind):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, kind)
    for config in WRAPS:
        _wrap(model, config)
        measured = _counted(model, lambda: model(**inputs))
        (breakdown,) = call_flops(model, inputs, logits="all")
        _assert_close(measured, _modelled(breakdown))
        assert breakdown.vision > 0 and breakdown.projector > 0
        if config == "divprune":
            assert breakdown.reduction > 0 and vtr.stats(model).visual_after < vtr.stats(model).visual_before
        if config == "fastv":
            per_layer = breakdown.llm_prefill_per_layer
            assert breakdown.reduction > 0 and per_layer[2] < per_layer[1]
        if vtr.is_wrapped(model):
            vtr.unwrap(model)


@pytest.mark.parametrize("name", ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
                                  "internvl", "gemma3"])
@pytest.mark.parametrize("method", ["hiprune", "visionzip"])
def test_vision_attention_methods_match_flop_counter(tiny, name, method):
    """The attention capture runs vision-tower projections, so only totals compare component-free."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, method, budget=0.5)
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    assert breakdown.reduction > 0
    assert breakdown.total == pytest.approx(measured["total"], rel=TOLERANCE)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "gemma3"])
@pytest.mark.parametrize("options", [{}, dict(score_layer="previous", renumber=False, rounding="round")])
def test_pdrop_matches_flop_counter(tiny, name, options):
    """The default scores with layer K's projections and renumbers positions (elementwise rotary work,
    no matmul); vtr's earlier variant scores with layer K-1's: both cost the same q/k recompute."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, "pdrop", **options)
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    _assert_close(measured, _modelled(breakdown))
    per_layer = breakdown.llm_prefill_per_layer
    assert breakdown.reduction > 0 and per_layer[3] < per_layer[2] < per_layer[1] < per_layer[0]


@pytest.mark.parametrize("name, kind", [("llava_next", "image"), ("qwen2_5_vl", "video")])
def test_holitom_inner_matches_flop_counter(tiny, name, kind):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, kind)
    vtr.wrap(model, "holitom_inner", budget=0.5, layer=2)
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    _assert_close(measured, _modelled(breakdown))


def test_holitom_matches_flop_counter(tiny):
    """The whole call (vision attention capture included) agrees, and the DPC-KNN distance matmul is exact:
    the model reads it off the provenance, the counter off the method's own run."""
    model, processor = tiny("qwen2_5_vl")
    frame = testing.random_video(1, 64, 48, seed=0)
    inputs = processor(videos=[np.repeat(frame, 4, axis=0)], text=[testing.prompt(processor, "what ?", images=0,
                                                                                     videos=1)], return_tensors="pt")
    vtr.wrap(model, "holitom", budget=0.1)  # one segment of 48 static tokens, 10 clusters
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    assert breakdown.total == pytest.approx(measured["total"], rel=TOLERANCE)
    features = torch.randn(2 * 48, 64, generator=torch.Generator().manual_seed(0))
    features[48:] = features[:48] + 0.01 * torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    features[:3] = torch.randn(3, 64)  # three dynamic positions in the first frame
    item = VisualItem(features, (Segment(0, (2, 8, 6)),), "video", 0, {"holitom": (torch.rand(96), torch.zeros(96, 1))})
    method = HoliTom(budget=0.1)
    with FlopCounterMode(display=False) as counter:
        reduction = method.reduce(item)
    stats = ItemStats("video", 96, reduction.kept.numel(), provenance=tuple(reduction.provenance(96).tolist()))
    assert counter.get_total_flops() == 2 * 45 * 45 * 64 > 0
    width = model.config.get_text_config().hidden_size
    assert dpc_knn_flops(stats, VisualInput("video", 2, 16, 12), width) == counter.get_total_flops()


GEMMA4_VARIANTS = {"tiny": {}, "kv_shared": testing.GEMMA4_KV_SHARING, "experts": testing.GEMMA4_EXPERTS}


@pytest.mark.parametrize("variant", list(GEMMA4_VARIANTS))
def test_gemma4_matches_flop_counter_forward_and_generate(variant):
    """Gemma 4 (in-LLM methods are refused there): the forward component by component, unwrapped and with
    divprune, and a generate call, whose prefill runs the KV-shared layers on the last token only."""
    model, processor = testing.build_gemma4(**GEMMA4_VARIANTS[variant])
    inputs = make_inputs(processor, "gemma4", "two_images")
    for options in (None, dict(method="divprune", budget=0.5)):
        if options is not None:
            vtr.wrap(model, **options)
        measured = _counted(model, lambda: model(**inputs))
        (breakdown,) = call_flops(model, inputs, logits="all")
        _assert_close(measured, _modelled(breakdown))
        generated = _counted(model, lambda: model.generate(**inputs, max_new_tokens=3, min_new_tokens=3,
                                                           do_sample=False))["total"]
        assert call_flops(model, inputs, new_tokens=3)[0].total == pytest.approx(generated, rel=TOLERANCE)


@pytest.mark.parametrize("method", [None, "divprune", "holitom"])
def test_gemma4_video_matches_flop_counter(method):
    """A video's frames each run the tower on the padded patch budget and pool alike."""
    model, processor = testing.build("gemma4")
    inputs = processor(videos=[testing.random_video(4, 64, 48)], text=[testing.prompt(processor, images=0, videos=1)],
                       return_tensors="pt", num_frames=4)
    if method is not None:
        vtr.wrap(model, method, budget=0.2)
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    if method is None:
        _assert_close(measured, _modelled(breakdown))
    assert breakdown.total == pytest.approx(measured["total"], rel=TOLERANCE)


@pytest.mark.parametrize("method", ["hiprune", "visionzip", "fastv", "pdrop"])
def test_gemma4_reducing_methods_match_flop_counter(method):
    """hiprune/visionzip's attention recompute (q/k projections, every row's logits) and the in-LLM methods'
    score recompute are booked as reduction; the layers from K on (their per-layer input branches included) run
    the kept tokens. Totals compare."""
    model, processor = testing.build("gemma4")
    inputs = make_inputs(processor, "gemma4", "two_images")
    vtr.wrap(model, method, **(dict() if method == "pdrop" else dict(budget=0.5)))
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    assert breakdown.reduction > 0
    assert breakdown.total == pytest.approx(measured["total"], rel=TOLERANCE)


VISION_WRAPS = {
    "tome": dict(method="tome", budget=20),
    "tome_vtu": dict(method="tome", r=12, vtu=True),
    "dymu": dict(method="dymu", thresholds=[0.6, 0.6]),
    "dymu_no_vtu": dict(method="dymu", thresholds=[0.6, 0.6], vtu=False),
    "tome_fastv": dict(method=["tome", "fastv"], budget=0.5, layer=2),
}


@pytest.mark.parametrize("config", list(VISION_WRAPS))
def test_vision_merging_matches_flop_counter(tiny, config):
    """Encoder layers at their merged token counts, the merge similarities (booked under the vision tower by
    the counter, under reduction by the model), virtual unmerging's full-length attention and KV cache."""
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, **VISION_WRAPS[config])
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    assert breakdown.total == pytest.approx(measured["total"], rel=1e-9)
    if config != "tome_fastv":  # there reduction also holds FastV's score recompute, outside the tower
        _assert_close(measured, dict(_modelled(breakdown), vision=breakdown.vision + breakdown.reduction,
                                     rest=breakdown.llm_prefill))
    assert breakdown.vision < call_flops(vtr.unwrap(model), inputs, logits="all")[0].vision
    vtr.wrap(model, **VISION_WRAPS[config])
    options = greedy_without_placeholders(model, do_sample=False)
    generated = _counted(model, lambda: model.generate(**inputs, max_new_tokens=3, min_new_tokens=3,
                                                       **options))["total"]
    assert call_flops(model, inputs, new_tokens=3)[0].total == pytest.approx(generated, rel=1e-9)


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
@pytest.mark.parametrize("config", [dict(method="tome", budget=8), dict(method="dymu", thresholds=[0.3] * 3),
                                    dict(method="dymu", thresholds=[0.3] * 3, vtu=False)])
def test_vision_merging_of_anyres_crops_matches_flop_counter(tiny, name, config):
    """Base image and crops merge as one padded encoder batch; the SigLIP head sees the merged last layer."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    vtr.wrap(model, **config)
    measured = _counted(model, lambda: model(**inputs))
    assert call_flops(model, inputs, logits="all")[0].total == pytest.approx(measured["total"], rel=1e-9)
    options = greedy_without_placeholders(model, do_sample=False)
    generated = _counted(model, lambda: model.generate(**inputs, max_new_tokens=3, min_new_tokens=3,
                                                       **options))["total"]
    assert call_flops(model, inputs, new_tokens=3)[0].total == pytest.approx(generated, rel=1e-9)


@pytest.mark.parametrize("name, kind, allocation", [("llava_onevision", "image", "per_segment"),
                                                    ("qwen2_vl", "video", "per_frame"),
                                                    ("llava_next", "image", "thumbnail"),
                                                    ("internvl", "image", "thumbnail")])
def test_divprune_allocations_match_flop_counter(tiny, name, kind, allocation):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, kind)
    vtr.wrap(model, "divprune", budget=0.3, allocation=allocation)
    measured = _counted(model, lambda: model(**inputs))
    (breakdown,) = call_flops(model, inputs, logits="all")
    _assert_close(measured, _modelled(breakdown))


# gemma3: decode steps past its sliding window; qwen3_5: recurrent layers (MoE decoding: tests/costs/test_decoder.py)
@pytest.mark.parametrize("name", MODELS + ["gemma3", "qwen3_5"])
@pytest.mark.parametrize("config", ["plain", "fastv"])
def test_generate_and_decode_step_match_flop_counter(tiny, name, config):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    _wrap(model, config)
    options = greedy_without_placeholders(model, do_sample=False)
    prefill = _counted(model, lambda: model.generate(**inputs, max_new_tokens=1, **options))["total"]
    two = _counted(model, lambda: model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, **options))["total"]
    (breakdown,) = call_flops(model, inputs, new_tokens=2)
    assert breakdown.decode == pytest.approx(two - prefill, rel=TOLERANCE)
    assert breakdown.total == pytest.approx(two, rel=TOLERANCE)


@pytest.mark.parametrize("name, sizes, wrap", [
    ("qwen2_5_vl", [(72, 40), (40, 88)], dict(method="divprune", budget=0.3)),  # partial attention windows
    ("llava_next", [(32, 32), (40, 32)], dict(method="fastv", budget=0.5, layer=2)),  # 2 and 3 crops, padded
    ("internvl", [(32, 32), (64, 64)], dict(method="divprune", budget=0.3)),  # 1 and 5 tiles
])
def test_padded_batch_of_mixed_sizes_costs_each_row_alone(tiny, name, sizes, wrap):
    model, processor = tiny(name)
    texts = [testing.prompt(processor, "what ?"), testing.prompt(processor, "describe this picture please ?")]
    images = [testing.random_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    vtr.wrap(model, **wrap)
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    model(**batch)
    rows = call_flops(model, batch, logits="all")
    for row, image, text in zip(rows, images, texts):
        alone = processor(images=[image], text=[text], return_tensors="pt")
        _assert_close(_counted(model, lambda: model(**alone)), _modelled(row))


def test_visual_inputs_follow_the_prompt_rows(tiny):
    model, processor = tiny("qwen2_vl")
    batch = make_inputs(processor, "qwen2_vl", kind="two_images", seeds=(0, 1))
    assert [[(i.frames, i.height, i.width) for i in row] for row in visual_inputs(model.config, batch)] == [
        [(1, 12, 16)] * 2] * 2


def test_visual_inputs_of_adjacent_placeholders_come_from_stats(tiny):
    """The tiny tokenizer drops the newline between two LLaVA images: their placeholder runs touch, so
    only a wrapped model's stats tell the rows apart."""
    model, processor = tiny("llava_next")
    batch = make_inputs(processor, "llava_next", kind="two_images", seeds=(0, 1))
    with pytest.raises(ValueError, match="vtr.wrap"):
        visual_inputs(model.config, batch)
    vtr.wrap(model, "none")
    model(**batch)
    rows = visual_inputs(model.config, batch, vtr.stats(model))
    assert [[(i.frames, i.height, i.width) for i in row] for row in rows] == [[(3, 4, 4)] * 2] * 2


def test_model_flops_for_an_unbuilt_geometry(tiny):
    """The low-level entry point prices a geometry without inputs: fewer tokens, fewer FLOPs, linearly
    in the projections and quadratically in attention."""
    model, _ = tiny("qwen2_5_vl")
    item = VisualInput("image", 1, 12, 16)
    layers = model.config.text_config.num_hidden_layers
    full = model_flops(model.config, [item], [61] * layers, new_tokens=8)
    pruned = model_flops(model.config, [item], [61] * 2 + [37] * (layers - 2), new_tokens=8)
    assert pruned.vision == full.vision and pruned.llm_prefill < full.llm_prefill and pruned.decode < full.decode
    assert full.llm_prefill_per_layer[0] == pruned.llm_prefill_per_layer[0]
    with pytest.raises(ValueError, match="one count per decoder layer"):
        model_flops(model.config, [item], [61], new_tokens=8)
    with pytest.raises(ValueError, match="logits"):
        model_flops(model.config, [item], [61] * layers, logits="first")


def test_stale_stats_are_refused(tiny):
    model, processor = tiny("llava")
    vtr.wrap(model, "divprune", budget=0.5)
    with pytest.raises(ValueError, match="does not describe"):
        call_flops(model, make_inputs(processor, "llava"))
    model(**make_inputs(processor, "llava"))
    with pytest.raises(ValueError, match="does not describe"):
        call_flops(model, make_inputs(processor, "llava", texts=["what ?"]))


def test_tokens_per_layer_reads_the_in_llm_stats(tiny):
    model, processor = tiny("llava")
    vtr.wrap(model, "fastv", budget=0.5, layer=2)
    model(**make_inputs(processor, "llava"))
    sample = vtr.stats(model).samples[0]
    assert tokens_per_layer(sample, 4) == [74, 74, 42, 42]


def test_format_breakdown_lists_every_component(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    breakdown = call_flops(model, inputs, new_tokens=4)[0]
    table = format_breakdown(breakdown)
    assert table.splitlines()[0].split() == ["MFLOPs", "sample", "0", "share"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["vision", "projector", "reduction", "llm",
                                                                   "decode", "total"]
    assert table.splitlines()[-1].endswith("100.0%")
    assert "GFLOPs" in format_breakdown([breakdown, breakdown], unit="G")
    assert breakdown.as_dict()["total"] == breakdown.total
