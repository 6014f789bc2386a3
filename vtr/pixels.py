"""Where an item's LLM tokens come from in the pixels the processor produced (for pictures of reductions).

A ``PixelMap`` is what an adapter says about one visual item (``Adapter.pixel_maps``): the pictures the
model saw (``Panel``: the processor's resized/cropped image, an AnyRes base image and its stitched crops,
the frames of a video), each as the model's own normalised ``pixel_values``, and for every *content*
token of the item (``vtr.layout``; structural newlines have no pixels) the box it covers on one of them.
``vtr.show`` paints kept, dropped and merged tokens from it; it never needs to know the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Panel:
    """One picture of an item, as the model got it: ``pixels`` (3, H, W), normalised by the processor."""

    name: str
    pixels: Tensor


@dataclass(frozen=True)
class PixelMap:
    """``boxes`` (content tokens, 5): panel index, top, bottom, left, right (pixels of that panel, bottom and
    right exclusive; fractional where the model interpolated its feature grid). ``missing``: why there is no
    map (then there are no panels and no boxes)."""

    panels: tuple[Panel, ...]
    boxes: Tensor
    missing: str = ""

    @classmethod
    def unavailable(cls, reason: str) -> "PixelMap":
        return cls((), torch.zeros(0, 5), reason)


def grid_boxes(grid: tuple[int, int, int], height: float, width: float, first_panel: int = 0) -> Tensor:
    """Boxes of a raster (t, h, w) token grid whose frame ``i`` covers panel ``first_panel + i`` uniformly
    (each token an ``height / h`` x ``width / w`` cell): LLaVA-1.5, Qwen's merged 2x2 blocks, pooled video
    frames."""
    t, h, w = grid
    frame, row, col = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    cell_h, cell_w = height / h, width / w
    row, col = row.flatten().double(), col.flatten().double()
    return torch.stack([(frame.flatten() + first_panel).double(), row * cell_h, (row + 1) * cell_h,
                        col * cell_w, (col + 1) * cell_w], dim=1)


def centred_boxes(panel: int, centres: Tensor, cell: tuple[float, float], scale: tuple[float, float]) -> Tensor:
    """Boxes around token ``centres`` (N, 2) (y, x in encoder patches) of size ``cell`` (patches), on panel
    ``panel`` whose pixels are ``scale`` (y, x) per patch."""
    centres = centres.double()
    half = torch.tensor(cell, dtype=torch.float64) / 2
    top_left, bottom_right = (centres - half), (centres + half)
    return torch.stack([torch.full((centres.shape[0],), float(panel), dtype=torch.float64),
                        top_left[:, 0] * scale[0], bottom_right[:, 0] * scale[0],
                        top_left[:, 1] * scale[1], bottom_right[:, 1] * scale[1]], dim=1)


def stitch_tiles(tiles: Tensor, rows: int, columns: int) -> Tensor:
    """(channels, rows * H, columns * W): ``tiles`` (rows * columns, channels, H, W), cut row-major out of one
    picture, put back where they were cut (LLaVA-NeXT's AnyRes crops, InternVL's tiles)."""
    channels, height, width = tiles.shape[1:]
    grid = tiles.reshape(rows, columns, channels, height, width).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * height, columns * width)
