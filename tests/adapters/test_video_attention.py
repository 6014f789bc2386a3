"""Vision attention of videos, mapped to the LLM's video tokens, equals eager attention pooled like the features."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
from transformers.vision_utils import get_vision_window_index

import vtr
from conftest import greedy_without_placeholders, make_inputs
from vtr.adapters import adapter_for
from vtr.vision.attention import AttentionRequest


def _eager_received(model, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """(frames, patches) attention received at ``layer``, from the tower's own eager weights."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            weights = model.model.vision_tower(pixels, output_attentions=True).attentions[layer]
    finally:
        model.set_attn_implementation("sdpa")
    return weights.float().mean(1).mean(1)


def _captured(model, inputs, layer: int) -> list[torch.Tensor]:
    adapter = adapter_for(model)
    requests = {"a": AttentionRequest(layer, "received")}
    with adapter.capture_attention(requests) as capture, torch.no_grad():
        adapter.encode("video", inputs)
    return [item["a"][0] for item in adapter.item_attention("video", capture, requests, inputs)]


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video"])
def test_llava_video_attention_is_pooled_like_the_features(tiny, name):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, "video", texts=["what ?", "what is in it ?"], seeds=(0, 1))
    layer = adapter_for(model).vision_info().feature_layer
    got = _captured(model, inputs, layer)
    pixels = inputs["pixel_values_videos"]
    videos, frames = pixels.shape[:2]
    received = _eager_received(model, pixels.flatten(0, 1), layer)
    if name == "llava_onevision":  # SigLIP, bilinear resize of the 4x4 patch grid to 2x2, one trailing newline
        maps = torch.nn.functional.interpolate(received.view(-1, 1, 4, 4), size=(2, 2), mode="bilinear")
        expected = torch.nn.functional.pad(maps.view(videos, frames * 4), (0, 1))
    else:  # CLIP: the class token is not a video token; 2x2 average pooling
        maps = torch.nn.functional.avg_pool2d(received[:, 1:].reshape(-1, 1, 4, 4), 2)
        expected = maps.view(videos, frames * 4)
    assert len(got) == videos
    for mine, reference in zip(got, expected):
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-5)


def test_qwen_video_attention_per_frame_equals_eager(tiny):
    """Qwen2.5-VL video, full-attention block: one attention sequence per temporal patch, 2x2 merge units
    averaged, window order undone."""
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl", "video")
    layer = 1
    recorded = []

    def recording_eager(module, *args, **kwargs):
        out, weights = modeling_qwen2_5_vl.eager_attention_forward(module, *args, **kwargs)
        if module is model.model.visual.blocks[layer].attn:
            recorded.append(weights.float().mean(1)[0].mean(0))
        return out, weights

    AttentionInterface.register("vtr_test_recording_video", recording_eager)
    (got,) = _captured(model, inputs, layer)
    vision_config = model.model.visual.config
    vision_config._attn_implementation = "vtr_test_recording_video"
    try:
        with torch.no_grad():
            model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    finally:
        vision_config._attn_implementation = "sdpa"
    t = int(inputs["video_grid_thw"][0, 0])
    assert len(recorded) == t  # one sequence per temporal patch
    visual = model.model.visual
    window_index, _ = get_vision_window_index(inputs["video_grid_thw"], spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    per_unit = torch.cat(recorded).view(-1, 4).mean(-1)
    expected = per_unit[torch.argsort(window_index)]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert got.numel() == t * int(inputs["video_grid_thw"][0, 1] * inputs["video_grid_thw"][0, 2]) // 4


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video"])
@pytest.mark.parametrize("method", ["hiprune", "visionzip"])
def test_attention_methods_run_on_llava_videos(tiny, name, method):
    """The mapping serves every method that asks for vision attention, not only HoliTom."""
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, "video", texts=["what ?", "what is in it ?"], seeds=(0, 1))
    greedy = greedy_without_placeholders(model)
    vtr.wrap(model, method, budget=6)
    cached = model.generate(**inputs, **greedy)
    clip = method == "visionzip" and model.config.vision_config.model_type == "clip_vision_model"
    expected = 5 if clip else 6  # visionzip's reference spends a dominant slot on CLS, which the model drops
    assert [s.items[0].content_after for s in vtr.stats(model).samples] == [expected, expected]
    assert torch.equal(cached.sequences, model.generate(**inputs, **greedy, use_cache=False).sequences)
