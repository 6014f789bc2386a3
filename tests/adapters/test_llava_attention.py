"""AnyRes vision attention lands on the packed LLaVA-NeXT / OneVision token grid exactly where the features do."""

from __future__ import annotations

import pytest
import torch

from conftest import eager_vision_attention, make_inputs
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import _encode
from vtr.methods.base import AttentionRequest


def _encoded(model, inputs, requests):
    adapter = adapter_for(model)
    ids = inputs["input_ids"]
    return _encode(adapter, "image", inputs, ids, inputs["attention_mask"], requests, None)


@pytest.mark.parametrize("name,query", [("llava_next", "cls"), ("llava_next", "received"),
                                        ("llava_onevision", "received"), ("llava_next_video", "received")])
def test_packed_attention_is_the_encoder_attention_of_the_token_each_feature_came_from(tiny, name, query):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, seeds=(0, 1))
    layer = 1
    encoded = _encoded(model, inputs, {"a": AttentionRequest(layer, query)})
    pixels = torch.cat([p[:n] for p, n in zip(inputs["pixel_values"], [3, 3])])  # base + 2 crops per image
    eager = eager_vision_attention(model, pixels, layer)
    drop = 1 if model.config.vision_feature_select_strategy == "default" else 0
    expected = (eager[:, 0] if query == "cls" else eager.mean(1))[:, drop:]  # (sequences, tokens)
    with torch.no_grad():  # every encoder token's own projected feature identifies where it was packed
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        projected = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, drop:])
    for image, (features, layout, attention) in enumerate(zip(encoded.features, encoded.layouts, encoded.attention)):
        scores, keys = attention["a"]
        assert scores.shape[0] == keys.shape[0] == features.shape[0]
        own = projected[3 * image:3 * image + 3].flatten(0, 1)
        for slot in layout.content.tolist():  # a naive loop: the definition of "aligned"
            source = int((own - features[slot]).abs().amax(-1).argmin())
            assert torch.equal(own[source], features[slot])
            tokens = expected.shape[1]
            assert torch.allclose(scores[slot], expected[3 * image + source // tokens, source % tokens], atol=1e-6)
        assert torch.all(scores[layout.structural] == 0)


def _interpolating_onevision(max_patches: int):
    model, processor = testing.build("llava_onevision")
    model.config.vision_aspect_ratio = f"anyres_max_{max_patches}"
    processor.vision_aspect_ratio = f"anyres_max_{max_patches}"
    return model, processor


def test_onevision_downsampled_crops_interpolate_attention_with_the_features():
    """anyres_max_1 makes the tiny model interpolate its 4x6 crops grid (ratio 1.22 > 1.1) to 3x4."""
    requests = {"a": AttentionRequest(1, "received")}
    model, processor = _interpolating_onevision(9)
    full = _encoded(model, make_inputs(processor, "llava_onevision"), requests)
    model, processor = _interpolating_onevision(1)
    small = _encoded(model, make_inputs(processor, "llava_onevision"), requests)
    (base_full, grid_full), (base_small, grid_small) = full.layouts[0].segments, small.layouts[0].segments
    assert grid_full.grid == (1, 4, 6) and grid_small.grid == (1, 3, 4) and base_small == base_full
    content_full = full.attention[0]["a"][0][full.layouts[0].content]
    content_small = small.attention[0]["a"][0][small.layouts[0].content]
    assert torch.equal(content_small[:base_small.size], content_full[:base_full.size])
    expected = torch.nn.functional.interpolate(content_full[grid_full.start:].view(1, 1, 4, 6), [3, 4],
                                               mode="bilinear")
    assert torch.allclose(content_small[grid_small.start:], expected.flatten(), atol=1e-7)


@pytest.mark.parametrize("max_patches", [9, 1])
def test_crop_boxes_tile_the_packed_crops_grid(max_patches):
    model, processor = _interpolating_onevision(max_patches)
    encoded = _encoded(model, make_inputs(processor, "llava_onevision"), {})
    base, grid = encoded.layouts[0].segments
    assert base.crops == ()
    _, rows, width = grid.grid
    covered = torch.zeros(rows, width, dtype=torch.long)
    for top, bottom, left, right in grid.crops:
        covered[top:bottom, left:right] += 1
    assert torch.equal(covered, torch.ones_like(covered))
    # a 40 x 32 image is padded to 64 x 32 (two crops side by side), then unpadded to 4 x 6 tokens
    assert len(grid.crops) == 2 and all(top == 0 and bottom == rows for top, bottom, _, _ in grid.crops)
    assert grid.crops[0][2] == 0 and grid.crops[0][3] == grid.crops[1][2] and grid.crops[1][3] == width
