"""Pixel maps of the Qwen-VL family (``vtr.pixels``): the processor's patches put back into pictures.

The Qwen processors resize each image (or video) to a multiple of ``patch_size * spatial_merge_size``,
repeat or group frames by ``temporal_patch_size`` and flatten it into patch rows ordered by 2x2 merge
block: (t, h/m, w/m, m, m) patches of (channels, temporal, p, p) values. Undoing that order gives the
resized pictures back exactly; each LLM token is one merged m x m block of one temporal group, so it
covers an (m p) x (m p) square of that group's first frame.
"""

from __future__ import annotations

from torch import Tensor

from vtr.layout import ItemLayout
from vtr.pixels import Panel, PixelMap, grid_boxes


def qwen_pixel_maps(vision_config, modality: str, pixel_values: Tensor, grid_thw: Tensor,
                    layouts: list[ItemLayout]) -> list[PixelMap]:
    patch, merge = int(vision_config.patch_size), int(vision_config.spatial_merge_size)
    temporal = int(vision_config.temporal_patch_size)
    channels = pixel_values.shape[-1] // (temporal * patch * patch)
    maps, start = [], 0
    for (t, h, w), layout in zip(grid_thw.tolist(), layouts):
        rows = pixel_values[start:start + t * h * w]
        start += t * h * w
        blocks = rows.view(t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
        # -> (t, temporal, channels, h/m, m, p, w/m, m, p): frames of the resized input
        frames = blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, temporal, channels, h * patch, w * patch)
        if modality == "image":
            panels = (Panel("image", frames[0, 0]),)
        else:
            panels = tuple(Panel(f"frames {i * temporal}-{i * temporal + temporal - 1}", frames[i, 0])
                           for i in range(t))
        maps.append(PixelMap(panels, grid_boxes(layout.segments[0].grid, h * patch, w * patch)))
    return maps
