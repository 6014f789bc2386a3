"""InternVL: tiles per image, the crops' arrangement, and InternViT attention mapped through the pixel shuffle."""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import eager_vision_attention, make_inputs
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import _encode
from vtr.methods.base import AttentionRequest


def _encoded(model, inputs, requests=None):
    adapter = adapter_for(model)
    return _encode(adapter, "image", inputs, inputs["input_ids"], inputs["attention_mask"], requests or {}, None)


@pytest.mark.parametrize("size,arrangement", [((64, 32), (1, 2)), ((32, 64), (2, 1)), ((64, 64), (2, 2)),
                                              ((96, 32), (1, 3)), ((32, 32), None)])
def test_tiles_and_their_arrangement_are_the_processors(size, arrangement):
    """The layout's crops grid is the grid the processor cut (its own canvas choice), thumbnail first."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
    model, processor = testing.build("internvl")
    image = testing.random_image(*size, seed=3)
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    columns, rows = get_optimal_tiled_canvas((size[1], size[0]), (32, 32), 1, 4)
    assert (rows, columns) == (arrangement or (1, 1))
    (layout,) = _encoded(model, inputs).layouts
    if arrangement is None:  # one tile, no thumbnail
        assert [s.grid for s in layout.segments] == [(1, 4, 4)]
        return
    base, crops = layout.segments
    assert base.grid == (1, 4, 4) and crops.grid == (1, 4 * rows, 4 * columns)
    assert len(crops.crops) == rows * columns
    # slots are tile-major (crops row-major, thumbnail last); content puts the thumbnail first
    tiles = rows * columns + 1
    assert torch.equal(layout.content[:16], torch.arange((tiles - 1) * 16, tiles * 16))
    grid = layout.content[16:].view(4 * rows, 4 * columns)
    for r in range(rows):
        for c in range(columns):  # crop (r, c) is tile r * columns + c, its tokens in raster order
            assert torch.equal(grid[4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten(),
                               torch.arange(16) + 16 * (r * columns + c))


@pytest.mark.parametrize("query", ["cls", "received"])
def test_attention_of_an_llm_token_is_the_mean_over_its_2x2_patches(query):
    model, processor = testing.build("internvl")
    inputs = make_inputs(processor, "internvl", "two_images")
    layer = 1
    encoded = _encoded(model, inputs, {"a": AttentionRequest(layer, query)})
    eager = eager_vision_attention(model, inputs["pixel_values"], layer)
    per_patch = (eager[:, 0] if query == "cls" else eager.mean(1))[:, 1:]  # class token dropped: (tiles, 64)
    # patch (2i + a, 2j + b) of the 8x8 patch grid goes into LLM token (i, j) of the 4x4 grid
    expected = per_patch.view(-1, 4, 2, 4, 2).mean((2, 4)).flatten(1)  # (tiles, 16)
    first = 0
    for features, attention in zip(encoded.features, encoded.attention):
        scores, keys = attention["a"]
        tiles = features.shape[0] // 16
        assert scores.shape == (features.shape[0],) and keys.shape[0] == features.shape[0]
        torch.testing.assert_close(scores, expected[first:first + tiles].flatten(), rtol=0, atol=1e-6)
        first += tiles
    assert first == inputs["pixel_values"].shape[0]


def test_placeholder_runs_that_do_not_split_into_tiles_are_refused():
    model, processor = testing.build("internvl")
    inputs = dict(make_inputs(processor, "internvl"))
    ids = inputs["input_ids"].clone()
    image = model.config.image_token_id
    ids[0, (ids[0] == image).nonzero()[5]] = testing.token_id("the")  # one run becomes two
    inputs["input_ids"] = ids
    vtr.wrap(model, "divprune", budget=8)
    with pytest.raises(vtr.ReductionError, match="placeholder runs .* do not split into the 3 tiles"):
        model.generate(**inputs, max_new_tokens=2)


def test_holitom_reduces_each_video_frame_as_an_image_and_cached_equals_uncached():
    """InternVL's frames are images ("Frame1: <img>...</img>"): HoliTom runs on each frame alone."""
    model, processor = testing.build("internvl")
    inputs = make_inputs(processor, "internvl", "video", texts=["what ?", "describe this video please ?"],
                         seeds=(0, 1))
    greedy = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True,
                  suppress_tokens=[model.config.image_token_id])
    vtr.wrap(model, "holitom", budget=4)
    cached = model.generate(**inputs, **greedy)
    assert [[item.content_after for item in s.items] for s in vtr.stats(model).samples] == [[4] * 4] * 2
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
