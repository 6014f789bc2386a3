"""Paint what a reduction did to one visual item onto the pictures the processor made (numpy only).

Per content token (``vtr.pixels.PixelMap``): a token kept as itself shows its pixels unchanged; a token
dropped (provenance -1, or, after an in-LLM stage, whose token did not reach the last decoder layer) is
dimmed towards white; tokens merged into one LLM token are filled with one flat colour, the mean of
their pixels blended with a colour of their own, so that a merged group reads as one token and
neighbouring groups stay apart. Pixels no token covers (AnyRes padding the model unpads away) are
dimmed like dropped tokens.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from vtr.pixels import PixelMap
from vtr.stats import ItemStats

DIM = 0.3  # a dropped pixel keeps this much of itself, the rest is white
TINT = 0.5  # a merged group's colour: this much of its own palette colour, the rest its mean pixel
PALETTE = np.array([  # distinct, saturated (tab10 without grey)
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)], dtype=np.float64) / 255


def to_rgb(pixels: Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> np.ndarray:
    """(3, H, W) normalised model input -> (H, W, 3) in [0, 1], undoing the processor's normalisation."""
    image = pixels.detach().double().cpu().numpy().transpose(1, 2, 0)
    if mean is not None and std is not None:
        image = image * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)
    return np.clip(image, 0.0, 1.0)


def dim(pixels: np.ndarray) -> np.ndarray:
    return DIM * pixels + (1 - DIM)


def token_owner(pixel_map: PixelMap, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Per panel, (H, W) the content token covering each pixel (-1: none); a pixel belongs to the token
    whose box holds its centre."""
    owners = [np.full(shape, -1, dtype=np.int64) for shape in shapes]
    boxes = pixel_map.boxes.double().numpy()
    panel = boxes[:, 0].astype(np.int64)
    top, bottom, left, right = (np.clip(np.ceil(boxes[:, k] - 0.5), 0, None).astype(np.int64)
                                for k in range(1, 5))  # first / one past the last pixel whose centre is inside
    for token in range(boxes.shape[0]):  # a few thousand boxes at most, once per picture
        owners[panel[token]][top[token]:bottom[token], left[token]:right[token]] = token
    return owners


def paint(pixel_map: PixelMap, item: ItemStats | None, mean=None, std=None,
          reached: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """The panels of ``pixel_map`` painted with ``item``'s reduction (``None``: the unreduced input, every
    token shown as it is). ``reached``: the LLM tokens of the item (indices into its kept tokens) that
    reached the last decoder layer, when an in-LLM stage ran."""
    images = [to_rgb(panel.pixels, mean, std) for panel in pixel_map.panels]
    owners = token_owner(pixel_map, [image.shape[:2] for image in images])
    n_tokens = pixel_map.boxes.shape[0]
    if item is None:
        provenance = np.arange(n_tokens)
    else:
        provenance = np.asarray(item.provenance, dtype=np.int64)
        if provenance.shape[0] != n_tokens:
            raise ValueError(f"the reduction recorded {provenance.shape[0]} content tokens for this "
                             f"{item.modality}, its pixel map has {n_tokens}")
    groups = max(int(provenance.max(initial=-1)) + 1, item.content_after if item is not None else 0, 1)
    size = np.bincount(provenance[provenance >= 0], minlength=groups)
    alive = np.ones(groups, dtype=bool)
    if reached is not None:
        alive[:] = False
        alive[np.asarray(reached, dtype=np.int64)] = True
    # the mean pixel of every group, over all panels (a merged video token spans frames)
    sums, counts = np.zeros((groups, 3)), np.zeros(groups)
    for image, owner in zip(images, owners):
        group = np.where(owner >= 0, provenance[owner.clip(0)], -1)
        np.add.at(sums, group[group >= 0], image[group >= 0])
        counts += np.bincount(group[group >= 0], minlength=groups)
    colour = (1 - TINT) * sums / counts.clip(1)[:, None] + TINT * PALETTE[np.arange(groups) % len(PALETTE)]
    painted = []
    for image, owner in zip(images, owners):
        group = np.where(owner >= 0, provenance[owner.clip(0)], -1)
        out = image.copy()
        merged = (group >= 0) & (size[group.clip(0)] > 1)
        out[merged] = colour[group[merged]]
        dropped = (group < 0) | ~alive[group.clip(0)]
        out[dropped] = dim(out[dropped])
        painted.append(out)
    return painted


def side_by_side(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Pictures in one row, top-aligned on white, ``gap`` white pixels apart (an item's panels, a video's
    frames, the items of a sample)."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.ones((height, width, 3))
    x = 0
    for image in images:
        canvas[:image.shape[0], x:x + image.shape[1]] = image
        x += image.shape[1] + gap
    return canvas
