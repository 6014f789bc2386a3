"""DyMU threshold calibration: per-layer DToMe thresholds from a set of images (the reference's threshold
finder, batch-level DToMe).

For each batch of B images the encoder runs with batch-level merging: after merging layer l the A->B
edges of all images are ranked together and the ``target_removed * B`` most similar merge, so simple
images give more tokens than busy ones. The batch's threshold is the similarity of the best edge left
unmerged, floored at 0; a layer's threshold is the mean over batches. Later layers see the batch-merged
sequences, so one pass per batch finds every layer's threshold in order. DyMU then merges, per image,
every edge strictly above its layer's threshold: on images like the calibration set it removes about
``target_removed`` tokens per layer on average.

Deviations from the reference: merging keeps token order (``vtr.ops.matching``), similarities are
float32 whatever the encoder dtype, and the encoder is not switched to train mode (vtr's batch-level
matcher is explicit, and CLIP has no dropout at inference anyway).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from vtr.methods.vision import EncoderGeometry
from vtr.ops.matching import max_merges
from vtr.vision.merging import EncoderMerging, MergeTarget


class _BatchLevelMatcher:
    """Merges the ``removed * B`` best edges of the whole batch per layer and records the batch thresholds."""

    def __init__(self, removed: int, geometry: EncoderGeometry) -> None:
        tokens = geometry.tokens
        for layer in range(geometry.merge_layers):
            if removed > max_merges(tokens, geometry.protected):
                raise ValueError(
                    f"target_removed={removed} per layer is more than layer {layer} can merge on average: its "
                    f"{tokens} tokens allow at most {max_merges(tokens, geometry.protected)} merges; pass a "
                    f"smaller target"
                )
            tokens -= removed
        self.removed = removed
        self.thresholds: list[float] = [math.inf] * geometry.merge_layers

    def active(self, layer: int) -> bool:
        return True

    def merges(self, layer: int, similarity: Tensor) -> list[int]:
        ranked = torch.sort(similarity.flatten(), descending=True, stable=True)
        count = min(self.removed * similarity.shape[0], int(ranked.values.isfinite().sum()))
        unmerged_best = float(ranked.values[count]) if count < ranked.values.numel() else 0.0
        self.thresholds[layer] = max(unmerged_best, 0.0)
        rows = torch.div(ranked.indices[:count], similarity.shape[1], rounding_mode="floor")
        return torch.bincount(rows, minlength=similarity.shape[0]).tolist()  # the batch's best edges, per row


def calibrate_target(target: MergeTarget, pixel_batches: Iterable[Tensor], target_removed: int) -> list[float]:
    """Per-layer DToMe thresholds (one per merging layer) of the encoder ``target`` (an adapter's
    ``merge_target()``), from batches of pixel values (N, C, H, W) the tower takes as they are.
    ``target_removed``: tokens removed per layer, on average over the images (``vtr.calibration.calibrate``
    is the model-level entry point)."""
    if isinstance(target_removed, bool) or not isinstance(target_removed, int) or target_removed < 1:
        raise ValueError(f"target_removed must be an int >= 1 (tokens merged per encoder layer), "
                         f"got {target_removed!r}")
    matchers: list[_BatchLevelMatcher] = []  # one per batch, made when the encoder call starts

    def make(geometry: EncoderGeometry) -> _BatchLevelMatcher:
        matchers.append(_BatchLevelMatcher(target_removed, geometry))
        return matchers[-1]

    merging = EncoderMerging(target, make)
    for pixels in pixel_batches:
        with torch.no_grad(), merging.installed():
            merging.target.tower(pixels)
    per_batch = [matcher.thresholds for matcher in matchers]
    if not per_batch:
        raise ValueError("calibrate needs at least one image")
    return [sum(layer) / len(per_batch) for layer in zip(*per_batch)]
