"""DyMU threshold calibration of a model: its images (or pixel values) through its adapter's merge target.

The batch-level DToMe itself (how a batch's thresholds are found) is ``vtr.vision.calibrate``; this
module adds what needs the model: the adapter, the processor, and AnyRes crops. ``vtr calibrate`` (the
command) reads a folder of images and writes the result as JSON.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from vtr.adapters import adapter_for
from vtr.vision.calibrate import calibrate_target


def calibrate(model: torch.nn.Module, images: Tensor | Sequence, target_removed: int, *, processor=None,
              batch_size: int = 32) -> list[float]:
    """Per-layer DToMe thresholds (one per merging layer, up to the feature layer) for ``model``.

    ``images``: pixel values (N, C, H, W) as the model's processor makes them, or PIL images together
    with ``processor``. ``target_removed``: tokens removed per layer, on average over the images. AnyRes
    models (LLaVA-NeXT, OneVision) calibrate on every base image and crop, each an encoder sequence of its
    own as when DyMU runs (the processor's all-zero padding crops are left out).
    """
    target = adapter_for(model).merge_target()
    return calibrate_target(target, _pixel_batches(model, images, processor, batch_size), target_removed)


def _pixel_batches(model: torch.nn.Module, images: Tensor | Sequence, processor, batch_size: int) -> Iterator[Tensor]:
    parameter = next(model.parameters())
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if not isinstance(chunk, Tensor):
            if processor is None:
                raise ValueError("calibrate got images, not pixel values: pass the model's processor= as well")
            chunk = processor.image_processor(images=list(chunk), return_tensors="pt")["pixel_values"]
        if chunk.dim() == 5:  # AnyRes: (images, base + crops, C, H, W), zero-padded to the most crops
            chunk = chunk.flatten(0, 1)
            chunk = chunk[chunk.flatten(1).abs().amax(1) > 0]
        yield chunk.to(device=parameter.device, dtype=parameter.dtype)
