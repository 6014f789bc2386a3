"""Pixel maps of the LLaVA family (``vtr.pixels``): which processor pixels each content token covers.

LLaVA-1.5: one square grid over the resized, center-cropped image. AnyRes images (LLaVA-NeXT, OneVision,
NeXT-Video): the base image's grid over the base picture, and the crops grid over the crops stitched in
their real places. Where the crops grid sits is read the way ``vtr.adapters.llava_attention`` reads
scores: the model's own ``pack_image_features`` is replayed on each encoder token's centre (in patches of
the stitched crops), so unpadding and OneVision's bilinear downsampling move the centres exactly as they
move the features. Videos: each frame's pooled grid over that frame.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor

from vtr.adapters.llava_attention import Packing
from vtr.layout import ItemLayout
from vtr.pixels import Panel, PixelMap, centred_boxes, grid_boxes, stitch_tiles


def square_image_maps(pixel_values: Tensor, layouts: list[ItemLayout], patch_size: int) -> list[PixelMap]:
    """One grid of patches per image (LLaVA-1.5); refused where the grid is not the image's patch grid
    (the "full" strategy keeps the class token, which covers no patch)."""
    maps = []
    for image, layout in zip(pixel_values, layouts):
        height, width = image.shape[-2:]
        grid = layout.segments[0].grid
        if grid[1:] != (height // patch_size, width // patch_size):
            maps.append(PixelMap.unavailable(f"its {grid[1]}x{grid[2]} token grid is not the image's "
                                             f"{height // patch_size}x{width // patch_size} patch grid"))
            continue
        maps.append(PixelMap((Panel("image", image),), grid_boxes(grid, height, width)))
    return maps


def video_maps(pixel_values_videos: Tensor, layouts: list[ItemLayout]) -> list[PixelMap]:
    """Each frame's pooled (h, w) grid spread evenly over that frame."""
    maps = []
    for video, layout in zip(pixel_values_videos, layouts):
        grid = layout.segments[0].grid
        panels = tuple(Panel(f"frame {i}", frame) for i, frame in enumerate(video))
        maps.append(PixelMap(panels, grid_boxes(grid, video.shape[-2], video.shape[-1])))
    return maps


def anyres_image_maps(model: torch.nn.Module, pixel_values: Tensor, layouts: list[ItemLayout],
                      packing: Packing) -> list[PixelMap]:
    """Base image and stitched crops of every AnyRes image, with each packed token's box on them."""
    config = model.config
    crop_size = int(config.vision_config.image_size)
    side = crop_size // int(config.vision_config.patch_size)  # encoder patches per crop side
    grid_shape = sys.modules[type(model.model).__module__].get_anyres_image_grid_shape
    image_sizes = packing.arguments.get("image_sizes")
    centres, shapes = [], []
    for index, sequences in enumerate(packing.patches):
        crops_high, crops_wide = (1, 1)
        if sequences > 1:
            crops_high, crops_wide = grid_shape(image_sizes[index], config.image_grid_pinpoints, crop_size)
        shapes.append((int(crops_high), int(crops_wide)))
        centres.append(_patch_centres(sequences, side, int(crops_wide)))
    packed = packing.pack(torch.cat(centres).to(pixel_values.device, pixel_values.dtype))
    maps = []
    for image, layout, values, sequences, (crops_high, crops_wide) in zip(
            pixel_values, layouts, packed, packing.patches, shapes):
        content = values[layout.content].double().cpu()
        base = layout.segments[0]
        panels = [Panel("base image", image[0])]
        boxes = [centred_boxes(0, content[base.start:base.stop], (1.0, 1.0), (crop_size / side,) * 2)]
        if len(layout.segments) == 2:
            crops = layout.segments[1]
            panels.append(Panel("crops", stitch_tiles(image[1:sequences], crops_high, crops_wide)))
            grid_centres = content[crops.start:crops.stop]
            boxes.append(centred_boxes(1, grid_centres, _cell(grid_centres, crops.grid[1:]), (crop_size / side,) * 2))
        maps.append(PixelMap(tuple(panels), torch.cat(boxes)))
    return maps


def _patch_centres(sequences: int, side: int, crops_wide: int) -> Tensor:
    """(sequences, side * side, 2): the centre (y, x) of each encoder token, in patches of its own picture:
    the base image (sequence 0) or the stitched crops (crop ``j`` at row ``j // crops_wide``, column
    ``j % crops_wide``, as the model views them)."""
    row, col = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    local = torch.stack([row.flatten(), col.flatten()], dim=1).double() + 0.5
    offsets = [torch.zeros(2, dtype=torch.float64)] + [
        torch.tensor([(j // crops_wide) * side, (j % crops_wide) * side], dtype=torch.float64)
        for j in range(sequences - 1)]
    return torch.stack([local + offset for offset in offsets])


def _cell(centres: Tensor, grid: tuple[int, int]) -> tuple[float, float]:
    """The size (patches) of one packed crops token: the spacing of the centres, 1 unless OneVision
    downsampled the grid (the median step: bilinear resampling clamps the outermost centres)."""
    rows, width = grid
    field = centres.view(rows, width, 2)
    high = float(field[1:, 0, 0].diff(prepend=field[:1, 0, 0]).median()) if rows > 1 else 1.0
    wide = float(field[0, 1:, 1].diff(prepend=field[0, :1, 1]).median()) if width > 1 else 1.0
    return high, wide
