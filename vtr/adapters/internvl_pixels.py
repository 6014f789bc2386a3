"""Pixel maps of InternVL (``vtr.pixels``): the thumbnail and the crops, each token on its 2x2 patch block.

The processor (GotOcr2's ``crop_image_to_patches``) resized the image to a canvas of rows x columns tiles
and cut it row-major; with more than one crop it appended a thumbnail, the whole image at one tile. Put
back where they were cut, the crops are the resized canvas, so a crop token sits in its real place on the
whole image; the thumbnail's tokens cover the whole image too, at one tile's resolution. Within a tile, the
model's pixel shuffle makes raster token (i, j) of its 2x2 patch block at patch rows 2i, 2i+1 and columns
2j, 2j+1: the item's layout (``vtr.adapters.internvl.tiled_layout``) already lists the thumbnail's grid
and the stitched crops' grid in raster order, so each grid spreads evenly over its panel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtr.layout import ItemLayout
from vtr.pixels import Panel, PixelMap, grid_boxes, stitch_tiles


def tiled_pixel_maps(pixel_values: Tensor, tiles: list[int], layouts: list[ItemLayout]) -> list[PixelMap]:
    """Per item (image or video frame): one panel for a single tile, else the thumbnail and the stitched
    crops; ``tiles`` the tile count of each item, in ``pixel_values`` order."""
    maps = []
    for item, layout in zip(pixel_values.split(tiles), layouts):
        height, width = item.shape[-2:]
        if len(layout.segments) == 1:
            maps.append(PixelMap((Panel("image", item[0]),), grid_boxes(layout.segments[0].grid, height, width)))
            continue
        thumbnail, crops = layout.segments
        rows, columns = crops.grid[1] // thumbnail.grid[1], crops.grid[2] // thumbnail.grid[2]
        panels = (Panel("thumbnail", item[-1]), Panel("crops", stitch_tiles(item[:-1], rows, columns)))
        boxes = [grid_boxes(thumbnail.grid, height, width, 0),
                 grid_boxes(crops.grid, rows * height, columns * width, 1)]
        maps.append(PixelMap(panels, torch.cat(boxes)))
    return maps
