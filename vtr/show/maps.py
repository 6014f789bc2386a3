"""The pixel maps of every visual item of a set of processor inputs, in the order ``vtr.stats`` lists items.

The maps need each item's layout, which the adapter reads off the encoded features, so the vision encoder
runs once more here (without any reduction): a picture costs one encode, never a change to the call it
pictures.
"""

from __future__ import annotations

from typing import Any

import torch

from vtr.adapters import adapter_for
from vtr.pixels import PixelMap


def pixel_maps(model: torch.nn.Module, inputs: dict[str, Any]) -> list[list[PixelMap]]:
    """Per batch row, the pixel map of each of its visual items (images first, then videos, as
    ``vtr.stats(model).samples[row].items``)."""
    adapter = adapter_for(model)
    inputs = adapter.fill_missing_inputs(dict(inputs))
    ids = inputs["input_ids"]
    per_row: list[list[PixelMap]] = [[] for _ in range(ids.shape[0])]
    for modality in adapter.present_modalities(inputs):
        with torch.no_grad():
            output = adapter.encode(modality, inputs)
        features = adapter.item_features(modality, output)
        layouts = adapter.item_layouts(modality, inputs, features)
        maps = adapter.pixel_maps(modality, inputs, layouts)
        placeholder = ids == adapter.placeholder_token_id(modality)
        rows = placeholder.nonzero(as_tuple=True)[0].split([f.shape[0] for f in features])
        for item_rows, item_map in zip(rows, maps):
            per_row[int(item_rows[0])].append(item_map)
    return per_row
