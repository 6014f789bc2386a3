"""InternVL3 / 3.5 (``internvl``): InternViT per 448-pixel tile, 2x2 pixel shuffle, MLP projector, 1-D RoPE LLM.

What the model does (transformers 5.x ``modeling_internvl``), and what vtr makes of it:

* The processor cuts an image into a grid of R x C tiles (crops, row-major) plus a thumbnail of the whole
  image when there is more than one crop; every tile is an InternViT sequence (a class token, then a square
  grid of patches). ``get_image_features`` drops the class token ("default" strategy), pixel-shuffles each
  2x2 block of patches into one token (``downsample_ratio`` 0.5) and projects: ``(tiles, tokens, D)``.
* An image's tiles sit together between ``<img>`` and ``</img>``: one run of placeholder tokens per image,
  tiles in order. The processor does not say how many tiles an image has, nor its R x C arrangement: the
  tile count comes from the run length, the arrangement from the pixels (``tile_arrangement``).
* A video reaches the model as frames, each its own ``<img>`` run of one tile (``Frame1: <img>...</img>``);
  the model has no video input of its own, so vtr reduces every frame as an image with its own budget.
* vtr describes an image as LLaVA-NeXT's AnyRes images are described (``vtr.layout``): the thumbnail's grid
  first, then the crops stitched into one raster grid with each crop's box, so pooling works on the whole
  image and ``allocation="thumbnail"`` lets the thumbnail's attention share the budget over the crops. The
  content order is therefore not the slot order (the model's tile-major order); the engine places every
  kept token back into its own slot.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vtr.adapters.base import Adapter
from vtr.adapters.internvl_pixels import tiled_pixel_maps
from vtr.errors import ReductionError
from vtr.layout import ItemLayout, Segment
from vtr.methods.base import AttentionRequest, VisionInfo
from vtr.pixels import PixelMap, stitch_tiles
from vtr.vision.attention import AttentionCapture, internvit_attention
from vtr.vision.merging import MergeTarget


def internvl_vision_info(config) -> VisionInfo:
    """InternViT: a class token; the features come from ``vision_feature_layer`` (hidden_states[f] is the
    output of layer f - 1; -1 is the last layer)."""
    depth, layer = config.vision_config.num_hidden_layers, config.vision_feature_layer
    if not isinstance(layer, int):
        raise ReductionError(f"vision attention needs one feature layer; this model concatenates layers {layer}")
    return VisionInfo(depth=depth, feature_layer=layer + depth if layer < 0 else layer - 1, has_cls=True,
                      encoder="clip")


def shuffle_group(config) -> int:
    """Encoder patches per LLM token along each axis: 2 for the usual ``downsample_ratio`` 0.5."""
    return round(1 / config.downsample_ratio)


def tokens_per_tile(config) -> int:
    """LLM tokens of one tile: (tile side / patch side / shuffle group)^2 (256 for 448-pixel tiles)."""
    patches = config.vision_config.image_size[0] // config.vision_config.patch_size[0]
    return (patches // shuffle_group(config)) ** 2


def tile_arrangement(tiles: Tensor) -> tuple[int, int]:
    """(rows, columns) of the crops of one image's tiles (crops row-major, then the thumbnail).

    The processor resized the image to (rows * tile, columns * tile) and cut it; the thumbnail is the whole
    image at one tile. So the crops stitched back in the right arrangement and shrunk to one tile look like
    the thumbnail, and a wrong arrangement scrambles the picture: the arrangement with the smallest
    difference wins (ties, e.g. a blank image: the widest, as landscape images are the most common).
    """
    crops, thumbnail = tiles[:-1].float(), tiles[-1].float()
    n, height, width = crops.shape[0], crops.shape[-2], crops.shape[-1]
    candidates = [(rows, n // rows) for rows in range(1, n + 1) if n % rows == 0]
    errors = []
    for rows, columns in candidates:  # the divisors of the crop count: a handful
        stitched = stitch_tiles(crops, rows, columns)
        shrunk = torch.nn.functional.adaptive_avg_pool2d(stitched[None], (height, width))[0]
        errors.append((shrunk - thumbnail).square().mean())
    return candidates[int(torch.stack(errors).argmin())]


def tiled_layout(tiles: int, arrangement: tuple[int, int], side: int, device: torch.device) -> ItemLayout:
    """Content = the thumbnail's (side x side) grid, then the crops stitched into one raster grid.

    Slots are the model's order: tile after tile, each tile's tokens in raster order, thumbnail last.
    """
    n = side * side
    if tiles == 1:
        return ItemLayout.grid_only((1, side, side), device)
    rows, columns = arrangement
    y = torch.arange(rows * side, device=device)[:, None]
    x = torch.arange(columns * side, device=device)[None, :]
    crop_slots = (((y // side) * columns + x // side) * n + (y % side) * side + x % side).flatten()
    content = torch.cat([torch.arange((tiles - 1) * n, tiles * n, device=device), crop_slots])
    boxes = tuple((r * side, (r + 1) * side, c * side, (c + 1) * side) for r in range(rows) for c in range(columns))
    segments = (Segment(0, (1, side, side)), Segment(n, (1, rows * side, columns * side), boxes))
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return ItemLayout(content, segments, empty, empty.view(0, 2))


def image_runs(input_ids: Tensor, token_id: int) -> list[int]:
    """Lengths of the runs of placeholder tokens (one per image or video frame), row-major."""
    is_placeholder = input_ids == token_id
    starts = is_placeholder & ~torch.nn.functional.pad(is_placeholder, (1, 0))[:, :-1]
    run_id = starts.flatten().cumsum(0)[is_placeholder.flatten()]
    return torch.bincount(run_id)[1:].tolist()


class InternVLAdapter(Adapter):
    model_types = ("internvl",)
    modalities_handled = ("image",)
    video_frames_as_images = True  # "Frame1: <img>...</img>": no video boundary reaches the model
    demo_image_size = (64, 32)  # a wide image: two crops and a thumbnail on the tiny model

    def encode(self, modality: str, inputs: dict[str, Any]):
        """Also record how many tiles each image (placeholder run) has, for ``item_features``."""
        output = super().encode(modality, inputs)
        per_tile = int(output.pooler_output.shape[1])
        runs = image_runs(inputs["input_ids"], self.placeholder_token_id(modality))
        if any(run % per_tile for run in runs) or sum(runs) != output.pooler_output.shape[0] * per_tile:
            raise ReductionError(
                f"the prompt's image placeholder runs {runs} do not split into the {output.pooler_output.shape[0]} "
                f"tiles of {per_tile} tokens the vision encoder produced; build input_ids and pixel_values with "
                f"the model's processor in one call")
        self._tiles = [run // per_tile for run in runs]  # read by item_features / item_layouts of this encode
        return output

    def item_features(self, modality: str, output) -> list[Tensor]:
        features = output.pooler_output
        return [tiles.flatten(0, 1) for tiles in features.split(self._tiles)]

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        side = math.isqrt(tokens_per_tile(self.config))
        pixels = inputs["pixel_values"].split(self._tiles)
        return [tiled_layout(n, tile_arrangement(p) if n > 1 else (1, 1), side, f.device)
                for n, p, f in zip(self._tiles, pixels, features)]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        return tiled_pixel_maps(inputs["pixel_values"], self._tiles, layouts)

    # ------------------------------------------------------------------ vision attention
    def vision_info(self) -> VisionInfo:
        return internvl_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layer[layer].attention

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per tile, scores and mean keys of every patch (class token dropped), pixel-shuffled by the model's
        own ``pixel_shuffle`` exactly as the features were: an LLM token's score and key are the means over
        the 2x2 patches it was made of. Slot order (tile after tile), like the features."""
        group = shuffle_group(self.config)
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in self._tiles]
        for name, request in requests.items():
            hidden, _ = capture.hidden_states(request.layer)
            with torch.no_grad():
                attention = internvit_attention(self.vision_attention_module(request.layer), hidden, request.query)
            scores, keys = torch.stack(attention.scores), torch.stack(attention.keys)
            values = torch.cat([scores.unsqueeze(-1), keys], -1)[:, 1:]  # without the class token
            tiles, patches, channels = values.shape
            side = math.isqrt(patches)
            shuffled = self.model.model.pixel_shuffle(values.reshape(tiles, side, side, channels),
                                                      scale_factor=self.config.downsample_ratio)
            pooled = shuffled.reshape(tiles, -1, group * group, channels).mean(2)  # (tiles, tokens, 1 + d)
            for item, chunk in zip(per_item, pooled.split(self._tiles)):
                chunk = chunk.flatten(0, 1)
                item[name] = (chunk[:, 0], chunk[:, 1:])
        return per_item

    def merge_target(self) -> MergeTarget:
        raise ReductionError(
            "vision-encoder merging (tome, dymu) does not run on internvl: its pixel shuffle concatenates the "
            "channels of each 2x2 block of InternViT patches into one LLM token, so a token merged across blocks "
            "has no place in the projector's input; use a pre-LLM method (divprune, visionzip, hiprune, pool, "
            "...) or an in-LLM one (fastv, pdrop) there")
