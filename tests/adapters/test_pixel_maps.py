"""Adapter pixel maps (``Adapter.pixel_maps``): every content token's box matches the processor's geometry.

Each family is checked against something the map does not compute itself: the processor's own pixels
(without normalisation), the model's own per-sequence encoder features (AnyRes), the processor's grid
(Qwen), the video pooling's output grid (OneVision, NeXT-Video), the model's own pixel shuffle (InternVL).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from conftest import MODELS, image_for, make_inputs
from vtr import testing
from vtr.adapters import Adapter, adapter_for
from vtr.show.paint import to_rgb
from vtr.show.run import normalisation


built = functools.lru_cache(maxsize=None)(testing.build)  # read-only here: one build per family


def _maps(model, inputs, modality="image"):
    adapter = adapter_for(model)
    inputs = adapter.fill_missing_inputs(dict(inputs))
    with torch.no_grad():
        output = adapter.encode(modality, inputs)
    features = adapter.item_features(modality, output)
    layouts = adapter.item_layouts(modality, inputs, features)
    return adapter.pixel_maps(modality, inputs, layouts), features, layouts


def _rgb(processor, panel, modality="image"):
    return to_rgb(panel.pixels, *normalisation(processor, modality))


def _boxes_tile(boxes: np.ndarray, panel: int, height: int, width: int) -> bool:
    """The boxes on ``panel`` cover its pixels exactly once."""
    cover = np.zeros((height, width), dtype=int)
    for _, top, bottom, left, right in boxes[boxes[:, 0] == panel].astype(int):
        cover[top:bottom, left:right] += 1
    return bool((cover == 1).all())


def test_llava_center_crop_and_patch_grid():
    model, processor = built("llava")
    image = testing.random_image(48, 32, seed=3)  # wider than high: resized to 48x32, then center-cropped
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    (pixel_map,), _, _ = _maps(model, inputs)
    expected = processor.image_processor(image, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    assert np.allclose(_rgb(processor, pixel_map.panels[0]), expected.permute(1, 2, 0).numpy(), atol=1e-5)
    # the crop is the centre: the resized image is 48 wide, columns 8..40 survive
    resized = np.asarray(image.resize((48, 32), resample=3), dtype=np.float64) / 255
    assert np.allclose(_rgb(processor, pixel_map.panels[0]), resized[:, 8:40], atol=1.5 / 255)
    boxes = pixel_map.boxes.numpy()
    assert boxes.shape == (64, 5) and (boxes[:, 2] - boxes[:, 1] == 4).all()  # 8x8 patches of 4 pixels
    assert _boxes_tile(boxes, 0, 32, 32)
    assert boxes[9].tolist() == [0, 4, 8, 4, 8]  # raster order: token 9 is row 1, column 1


def _sequence_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(sequences, patches, D): what the projector makes of each encoder sequence (base image, crops)."""
    config = model.config
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        features = hidden[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        return model.model.multi_modal_projector(features)


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_anyres_tokens_sit_on_the_crop_patch_whose_features_they_carry(name):
    model, processor = built(name)
    image = image_for(name)  # 40x32: base image + 2 crops side by side, the padding unpadded away
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    (pixel_map,), (features,), (layout,) = _maps(model, inputs)
    base, crops = pixel_map.panels
    assert base.pixels.shape[-2:] == (32, 32) and crops.pixels.shape[-2:] == (32, 64)
    assert torch.equal(crops.pixels[:, :, 32:], inputs["pixel_values"][0, 2])  # crop 2 sits right of crop 1
    patch, crop = model.config.vision_config.patch_size, model.config.vision_config.image_size
    side = crop // patch
    per_sequence = _sequence_features(model, inputs["pixel_values"][0])
    content = features[layout.content]
    boxes = pixel_map.boxes
    assert boxes.shape[0] == content.shape[0] < 16 + 2 * 16  # unpadding removed padded columns
    for token, (panel, top, bottom, left, right) in enumerate(boxes.tolist()):
        assert (bottom - top, right - left) == (patch, patch)
        row, col = int(top) // patch, int(left) // patch
        sequence = 0 if panel == 0 else 1 + col // side  # one row of crops here
        expected = per_sequence[sequence, (row % side) * side + col % side]
        torch.testing.assert_close(content[token], expected)
    # the unpadded crops grid covers the middle of the stitched crops: none of it in the removed padding
    kept_columns = boxes[boxes[:, 0] == 1][:, 3:].unique()
    assert kept_columns.min() > 0 and kept_columns.max() < 64


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", [(64, 48), (32, 64)])
def test_qwen_dynamic_resolution_and_two_by_two_merge(name, size):
    model, processor = built(name)
    image = testing.random_image(*size, seed=1)  # multiples of patch x merge: the processor keeps the size
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    (pixel_map,), _, (layout,) = _maps(model, inputs)
    panel = _rgb(processor, pixel_map.panels[0])
    assert np.allclose(panel, np.asarray(image, dtype=np.float64) / 255, atol=1e-5)  # the patches put back
    t, h, w = inputs["image_grid_thw"][0].tolist()
    merge, patch = model.config.vision_config.spatial_merge_size, model.config.vision_config.patch_size
    assert layout.segments[0].grid == (t, h // merge, w // merge)
    boxes = pixel_map.boxes.numpy()
    assert (boxes[:, 2] - boxes[:, 1] == merge * patch).all() and (boxes[:, 4] - boxes[:, 3] == merge * patch).all()
    assert _boxes_tile(boxes, 0, size[1], size[0])


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video"])
def test_video_tokens_tile_each_frame_on_the_pooled_grid(name):
    model, processor = built(name)
    inputs = make_inputs(processor, name, "video")
    (pixel_map,), (features,), (layout,) = _maps(model, inputs, "video")
    frames = inputs["pixel_values_videos"].shape[1]
    patches = model.config.vision_config.image_size // model.config.vision_config.patch_size
    # OneVision resizes each frame's patch grid to ceil(n / 2); NeXT-Video average-pools it with its stride
    pooled = math.ceil(patches / 2) if name == "llava_onevision" else patches // model.config.spatial_pool_stride
    assert layout.segments[0].grid == (frames, pooled, pooled)
    assert features.shape[0] == frames * pooled * pooled + (name == "llava_onevision")  # + its one newline
    expected = processor.video_processor(videos=[testing.random_video(4, 32, 32)], do_normalize=False,
                                         return_tensors="pt")["pixel_values_videos"][0]
    boxes = pixel_map.boxes.numpy()
    for index, panel in enumerate(pixel_map.panels):
        assert np.allclose(_rgb(processor, panel, "video"), expected[index].permute(1, 2, 0).numpy(), atol=1e-5)
        assert _boxes_tile(boxes, index, 32, 32)
    assert (boxes[:, 2] - boxes[:, 1] == 32 / pooled).all()


def test_gemma4_patches_back_in_place_and_each_token_on_its_pooling_window():
    """A 64x48 image and a 48x64 one: each picture is the processor's resized image (its patches put back), and
    every token covers the 2x2 patch window the pooler averaged into it."""
    model, processor = built("gemma4")
    images = [[testing.random_image(64, 48, seed=2)], [testing.random_image(48, 64, seed=3)]]
    inputs = processor(images=images, text=[testing.prompt(processor)] * 2, return_tensors="pt", padding=True)
    maps, _, layouts = _maps(model, inputs)
    patch = model.config.vision_config.patch_size
    rows = zip(maps, layouts, inputs["image_position_ids"], inputs["pixel_values"])
    for pixel_map, layout, positions, pixels in rows:
        (panel,) = pixel_map.panels
        valid = (positions != -1).all(-1)
        x, y = positions[valid].unbind(-1)
        assert panel.pixels.shape[1:] == ((int(y.max()) + 1) * patch, (int(x.max()) + 1) * patch)
        for (px, py), row in zip(positions[valid].tolist(), pixels[valid]):  # each patch where its position says
            cut = panel.pixels[:, py * patch:(py + 1) * patch, px * patch:(px + 1) * patch]
            assert torch.equal(cut.permute(1, 2, 0).flatten(), row)
        boxes = pixel_map.boxes
        assert boxes.shape == (layout.content.numel(), 5) and (boxes[:, 2] - boxes[:, 1] == 2 * patch).all()
        assert _boxes_tile(boxes.numpy(), 0, *panel.pixels.shape[-2:])


def test_gemma4_video_frames_are_panels_of_their_own():
    model, processor = built("gemma4")
    inputs = processor(videos=[testing.random_video(4, 64, 48)], text=[testing.prompt(processor, images=0, videos=1)],
                       return_tensors="pt", num_frames=4)
    adapter = adapter_for(model)
    features = adapter.item_features("video", adapter.encode("video", inputs))
    (layout,) = adapter.item_layouts("video", inputs, features)
    (pixel_map,) = adapter.pixel_maps("video", inputs, [layout])
    assert [panel.name for panel in pixel_map.panels] == [f"frame {i}" for i in range(4)]
    assert pixel_map.boxes.shape == (layout.content.numel(), 5)
    assert pixel_map.boxes[:, 0].long().bincount().tolist() == [63] * 4  # each frame's tokens on its own panel


def test_a_family_without_a_map_says_so():
    model, processor = built("llava")
    inputs = make_inputs(processor, "llava")
    adapter = adapter_for(model)
    (_, _, layouts) = _maps(model, inputs)
    (pixel_map,) = Adapter.pixel_maps(adapter, "image", inputs, layouts)  # what a new family gets by default
    assert pixel_map.panels == () and "no pixel mapping for this family (llava)" in pixel_map.missing


def test_internvl_thumbnail_and_crops_in_their_places():
    """A 96x64 image (3 x 2 crops of 32 pixels and a thumbnail) and a 32x32 one (a single tile) in one
    prompt: every token's box is where the model's feature in its slot came from: its tile cut row-major
    out of the resized canvas, its 2x2 patch block as the model's own pixel shuffle groups the patches."""
    model, _ = built("internvl")
    processor = testing.internvl_processor(max_tiles=6)
    images = [testing.random_image(96, 64, seed=2), testing.random_image(32, 32, seed=3)]
    inputs = processor(images=images, text=[testing.prompt(processor, images=2)], return_tensors="pt")
    maps, _, layouts = _maps(model, inputs)
    tile, patch = model.config.vision_config.image_size[0], model.config.vision_config.patch_size[0]
    side = tile // patch  # 8x8 patches, 4x4 tokens per tile
    coordinates = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    shuffled = model.model.pixel_shuffle(coordinates[None].double() + 0.5, model.config.downsample_ratio)
    centres = shuffled.reshape(-1, 4, 2).mean(1) * patch  # (tokens, 2): each token's block centre in its tile
    columns = 3
    for image, pixel_map, layout, tiles in zip(images, maps, layouts, (7, 1)):
        names = [panel.name for panel in pixel_map.panels]
        assert names == (["thumbnail", "crops"] if tiles > 1 else ["image"])
        canvas = (64, 96) if tiles > 1 else (32, 32)  # the crops put back are the image resized to the canvas
        resized = np.asarray(image.resize(canvas[::-1], resample=3), dtype=np.float64) / 255
        assert np.allclose(_rgb(processor, pixel_map.panels[-1]), resized, atol=1.5 / 255)
        if tiles > 1:
            thumbnail = np.asarray(image.resize((tile, tile), resample=3), dtype=np.float64) / 255
            assert np.allclose(_rgb(processor, pixel_map.panels[0]), thumbnail, atol=1.5 / 255)
        boxes = pixel_map.boxes
        assert boxes.shape == (tiles * 16, 5) and (boxes[:, 2] - boxes[:, 1] == 2 * patch).all()
        assert (boxes[:, 4] - boxes[:, 3] == 2 * patch).all()
        for index, panel in enumerate(pixel_map.panels):
            assert _boxes_tile(boxes.numpy(), index, *panel.pixels.shape[-2:])
        for box, slot in zip(boxes, layout.content.tolist()):
            crop, token = divmod(slot, 16)  # the model's order: tile after tile, the thumbnail last
            on_thumbnail = tiles > 1 and crop == tiles - 1
            origin = torch.zeros(2) if on_thumbnail or tiles == 1 else torch.tensor(divmod(crop, columns)) * tile
            assert box[0] == (0 if on_thumbnail or tiles == 1 else 1)
            centre = torch.stack([box[1] + box[2], box[3] + box[4]]) / 2
            assert torch.equal(centre, origin.double() + centres[token]), (slot, box)


# the families outside conftest's MODELS too (see tests/adapters/test_gemma3.py, test_qwen_vl.py)
@pytest.mark.parametrize("name", MODELS + ["gemma3", "gemma4", "qwen3_5", "qwen3_5_moe", "qwen3_vl_moe"])
def test_every_supported_family_maps_every_content_token(name):
    model, processor = built(name)
    (pixel_map,), _, (layout,) = _maps(model, make_inputs(processor, name))
    assert not pixel_map.missing and pixel_map.boxes.shape == (layout.content.numel(), 5)
    for index, panel in enumerate(pixel_map.panels):  # every box inside its panel
        on = pixel_map.boxes[pixel_map.boxes[:, 0] == index]
        assert (on[:, 1:] >= 0).all() and (on[:, 2] <= panel.pixels.shape[-2]).all()
        assert (on[:, 4] <= panel.pixels.shape[-1]).all()
