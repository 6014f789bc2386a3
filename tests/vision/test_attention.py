"""Vision attention recomputed from q/k equals the eager attention weights, with the model left on SDPA."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from conftest import make_inputs
from vtr.adapters import adapter_for
from vtr.methods.base import AttentionRequest
from vtr.vision.attention import AttentionCapture, clip_like_attention, qwen_vit_attention


def _eager_encoder_attentions(model, vision_tower, pixel_values) -> tuple:
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return vision_tower(pixel_values, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("query", ["cls", "received"])
@pytest.mark.parametrize("layer", [0, 1])
def test_clip_attention_through_the_adapter_equals_eager(tiny, query, layer):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava", seeds=(0, 1))
    adapter = adapter_for(model)
    requests = {"a": AttentionRequest(layer, query)}
    with adapter.capture_attention(requests) as capture, torch.no_grad():
        adapter.encode("image", inputs)
    got = adapter.item_attention("image", capture, requests, inputs)
    weights = _eager_encoder_attentions(model, model.model.vision_tower, inputs["pixel_values"])[layer].mean(1)
    expected = weights[:, 0] if query == "cls" else weights.mean(1)
    for item, row in zip(got, expected):
        assert torch.allclose(item["a"][0], row[1:], atol=1e-6)  # the CLS column is not an LLM token
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_siglip_attention_equals_eager(tiny):
    model, processor = tiny("llava_onevision")
    tower = model.model.vision_tower
    pixels = make_inputs(processor, "llava_onevision")["pixel_values"][0]
    layer = tower.encoder.layers[1].self_attn
    with AttentionCapture().on({1: layer}) as capture, torch.no_grad():
        tower(pixels)
    args, kwargs = capture.inputs[1]
    with torch.no_grad():
        got = clip_like_attention(layer, args[0] if args else kwargs["hidden_states"], "received")
    expected = _eager_encoder_attentions(model, tower, pixels)[1].mean(1).mean(1)
    assert torch.allclose(torch.stack(got.scores), expected, atol=1e-6)


@pytest.mark.parametrize("rows_in_parts", [False, True])
@pytest.mark.parametrize("layer", [0, 1])  # the tiny Qwen2.5-VL ViT: block 0 windowed, block 1 full attention
def test_qwen_vit_attention_per_window_equals_eager(tiny, layer, rows_in_parts, monkeypatch):
    """Also when each segment's map is larger than a chunk (a high-resolution image on a full-attention layer):
    its query rows are then scored a few at a time."""
    if rows_in_parts:
        import vtr.vision.attention
        monkeypatch.setattr(vtr.vision.attention, "MAP_ENTRIES", 100)
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl")
    recorded = []

    def recording_eager(module, *args, **kwargs):
        out, weights = modeling_qwen2_5_vl.eager_attention_forward(module, *args, **kwargs)
        if module is model.model.visual.blocks[layer].attn:
            recorded.append(weights.float().mean(1)[0].mean(0))  # heads, then query rows
        return out, weights

    AttentionInterface.register("vtr_test_recording", recording_eager)
    adapter = adapter_for(model)
    requests = {"a": AttentionRequest(layer, "received")}
    vision_config = model.model.visual.config
    with adapter.capture_attention(requests) as capture, torch.no_grad():
        adapter.encode("image", inputs)
        vision_config._attn_implementation = "vtr_test_recording"
        try:
            model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        finally:
            vision_config._attn_implementation = "sdpa"
    args, kwargs = capture.inputs[layer]
    with torch.no_grad():
        got = qwen_vit_attention(model.model.visual.blocks[layer].attn, args[0] if args else kwargs["hidden_states"],
                                 kwargs["cu_seqlens"], kwargs["position_embeddings"], "received")
    segments = len(kwargs["cu_seqlens"]) - 1
    assert (segments > 1) == (layer == 0)  # windows in block 0, one image-wide segment in block 1
    assert len(got.scores) == len(recorded[-segments:]) == segments
    for mine, eager in zip(got.scores, recorded[-segments:]):
        assert torch.allclose(mine, eager, atol=1e-6)


@pytest.mark.parametrize("query", ["cls", "received"])
def test_long_videos_are_scored_a_chunk_of_frames_at_a_time_with_the_same_result(monkeypatch, query):
    """Frames beyond the map budget are scored in chunks; the result is the one-shot softmax's."""
    import vtr.vision.attention as attention

    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(7, 2, 9, 4, generator=generator), torch.randn(7, 2, 9, 4, generator=generator)
    rows = q[:, :, :1] if query == "cls" else q
    expected = torch.softmax(rows @ k.transpose(-1, -2) * 0.5, dim=-1).mean((1, 2))
    monkeypatch.setitem(attention.CHUNK_ENTRIES, "cpu", 3 * 2 * rows.shape[2] * 9)  # three frames per chunk
    torch.testing.assert_close(attention._probabilities(q, k, 0.5, query), expected)
    torch.testing.assert_close(attention._probabilities(q[0].clone(), k[0].clone(), 0.5, query), expected[0])


@pytest.mark.parametrize("query", ["cls", "received"])
@pytest.mark.parametrize("rows_per_part", [1, 4])
def test_a_map_larger_than_a_chunk_is_scored_a_few_query_rows_at_a_time_with_the_same_result(monkeypatch, query,
                                                                                             rows_per_part):
    """A sequence whose map alone exceeds ``MAP_ENTRIES``: its query rows go in parts (9 rows: 4 + 4 + 1), the
    frames one at a time; the result is the one-shot softmax's, and no part holds more than the cap."""
    from vtr.vision import attention

    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 2, 9, 4, generator=generator), torch.randn(3, 2, 9, 4, generator=generator)
    rows = q[:, :, :1] if query == "cls" else q
    expected = torch.softmax(rows @ k.transpose(-1, -2) * 0.5, dim=-1).mean((1, 2))
    monkeypatch.setitem(attention.CHUNK_ENTRIES, "cpu", 1)  # a frame at a time
    monkeypatch.setattr(attention, "MAP_ENTRIES", rows_per_part * 2 * 9)  # one frame's map: 2 x 9 x 9
    calls = []
    monkeypatch.setattr(attention.torch, "softmax", lambda x, dim: calls.append(x.shape) or x.softmax(dim))
    torch.testing.assert_close(attention._probabilities(q, k, 0.5, query), expected)
    torch.testing.assert_close(attention._probabilities(q[0].clone(), k[0].clone(), 0.5, query), expected[0])
    assert max(shape.numel() for shape in calls) <= rows_per_part * 2 * 9
