"""The painted pictures, pixel by pixel: kept patches as the processor made them, dropped ones dimmed, a
merged group in one colour, after an in-LLM stage only the tokens reaching the last layer bright."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vtr
from conftest import make_inputs
from vtr import testing
from vtr.pixels import Panel, PixelMap, grid_boxes
from vtr.show.maps import pixel_maps
from vtr.show.paint import DIM, dim, paint, side_by_side, to_rgb
from vtr.show.run import normalisation, picture
from vtr.stats import ItemStats, SampleStats


@pytest.fixture(scope="module")
def llava():
    model, processor = testing.build("llava")
    inputs = make_inputs(processor, "llava")
    return model, processor, inputs, pixel_maps(model, inputs)[0][0]


def _run(model, inputs, method, budget, **options):
    with vtr.reduced(model, method, budget, **options), torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        return vtr.stats(model).samples[0]


def _token_pixels(pixel_map, image, token):
    _, top, bottom, left, right = pixel_map.boxes[token].int().tolist()
    return image[top:bottom, left:right]


def test_selection_keeps_pixels_and_dims_the_dropped(llava):
    model, processor, inputs, pixel_map = llava
    item = _run(model, inputs, "divprune", 0.25).items[0]
    (painted,) = paint(pixel_map, item, *normalisation(processor, "image"))
    original = to_rgb(pixel_map.panels[0].pixels, *normalisation(processor, "image"))
    expected = processor.image_processor(testing.random_image(32, 32), do_normalize=False)["pixel_values"][0]
    assert np.allclose(original, np.asarray(expected).transpose(1, 2, 0), atol=1e-5)  # the processor's pixels
    provenance = np.asarray(item.provenance)
    assert (provenance >= 0).sum() == 16
    for token, output in enumerate(provenance):
        kept, mine = _token_pixels(pixel_map, original, token), _token_pixels(pixel_map, painted, token)
        assert np.array_equal(mine, kept if output >= 0 else DIM * kept + (1 - DIM)), token


def test_a_merged_group_is_one_colour(llava):
    model, processor, inputs, pixel_map = llava
    item = _run(model, inputs, "tome", 0.25).items[0]
    (painted,) = paint(pixel_map, item, *normalisation(processor, "image"))
    original = to_rgb(pixel_map.panels[0].pixels, *normalisation(processor, "image"))
    provenance = np.asarray(item.provenance)
    sizes = np.bincount(provenance)
    assert sizes.max() > 1, "ToMe at 25% merges"
    colours = {}
    for token, output in enumerate(provenance):
        pixels = _token_pixels(pixel_map, painted, token).reshape(-1, 3)
        if sizes[output] == 1:
            assert np.array_equal(pixels, _token_pixels(pixel_map, original, token).reshape(-1, 3))
            continue
        assert (pixels == pixels[0]).all()  # flat
        colours.setdefault(output, pixels[0])
        assert np.array_equal(colours[output], pixels[0])  # the group's one colour
    merged = [o for o in range(sizes.size) if sizes[o] > 1]
    assert len({tuple(colours[o]) for o in merged}) > 1  # groups stay apart


def test_in_llm_tokens_not_reaching_the_last_layer_are_dimmed(llava):
    model, processor, inputs, pixel_map = llava
    sample = _run(model, inputs, "fastv", 0.25)
    (item,) = sample.items
    assert len(item.last_layer) == sample.visual_per_layer[-1] == 16  # 25% of 64 at the last layer
    (painted,) = paint(pixel_map, item, *normalisation(processor, "image"), reached=item.last_layer)
    original = to_rgb(pixel_map.panels[0].pixels, *normalisation(processor, "image"))
    reached = set(item.last_layer)  # provenance is the identity: fastv drops nothing before the LLM
    for token in range(64):
        kept = _token_pixels(pixel_map, original, token)
        assert np.array_equal(_token_pixels(pixel_map, painted, token), kept if token in reached else dim(kept))


def test_holitom_static_tokens_span_their_frames():
    model, processor = testing.build("llava_onevision")
    frame = testing.random_video(1, 32, 32, seed=5)
    video = np.concatenate([frame] * 4)  # a static scene: HoliTom merges each patch over its window
    inputs = processor(videos=[video], text=[testing.prompt(processor, images=0, videos=1)], return_tensors="pt")
    (pixel_map,) = pixel_maps(model, inputs)[0]
    item = _run(model, inputs, "holitom", 0.25).items[0]
    panels = paint(pixel_map, item, *normalisation(processor, "video"))
    assert len(panels) == 4
    provenance = np.asarray(item.provenance)
    frame_of = pixel_map.boxes[:, 0].long().numpy()
    spanning = [o for o in np.unique(provenance[provenance >= 0]) if np.unique(frame_of[provenance == o]).size > 1]
    assert spanning, "a static video has tokens merged across frames"
    for output in spanning:
        colours = {tuple(_token_pixels(pixel_map, panels[frame_of[t]], t).reshape(-1, 3)[0])
                   for t in np.flatnonzero(provenance == output)}
        assert len(colours) == 1  # one colour on every frame it spans


def test_uncovered_pixels_are_dimmed_and_panels_sit_side_by_side():
    pixels = torch.rand(3, 8, 12)
    boxes = grid_boxes((1, 1, 2), 8, 8)  # two 4-pixel-wide tokens over the left 8 columns only
    pixel_map = PixelMap((Panel("image", pixels), Panel("second", pixels[:, :4, :4])), torch.cat(
        [boxes, grid_boxes((1, 1, 1), 4, 4, first_panel=1)]))
    first, second = paint(pixel_map, None)
    source = pixels.numpy().transpose(1, 2, 0)
    assert np.array_equal(first[:, :8], source[:, :8]) and np.allclose(first[:, 8:], dim(source[:, 8:]))
    canvas = side_by_side([first, second], gap=2)
    assert canvas.shape == (8, 12 + 2 + 4, 3) and (canvas[:, 12:14] == 1).all() and (canvas[4:, 14:] == 1).all()


def test_a_cell_without_a_pixel_map_says_why():
    item = ItemStats("image", 4, 2, provenance=(0, -1, 1, -1))
    cell = picture(None, [PixelMap.unavailable("no pixel mapping for this family (x)")], SampleStats((item,), 10, 8),
                   "budget 0.5", "a cat")
    assert cell.image is None and cell.note == "no pixel mapping for this family (x)"
    assert cell.title == "budget 0.5: 4 → 2 tokens\n“a cat”"
