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

import argparse
import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from vtr.adapters import adapter_for
from vtr.methods.vision import EncoderGeometry
from vtr.ops.matching import max_merges
from vtr.vision.merging import EncoderMerging

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


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

    def select(self, layer: int, similarity: Tensor, eligible: Tensor) -> Tensor:
        scores = similarity.masked_fill(~eligible, float("-inf")).flatten()
        ranked = torch.sort(scores, descending=True, stable=True)
        count = min(self.removed * similarity.shape[0], int(eligible.sum()))
        merged = torch.zeros_like(scores, dtype=torch.bool)
        merged[ranked.indices[:count]] = True
        unmerged_best = float(ranked.values[count]) if count < scores.numel() else 0.0
        self.thresholds[layer] = max(unmerged_best, 0.0)
        return merged.view_as(eligible) & eligible


def calibrate(model: torch.nn.Module, images: Tensor | Sequence, target_removed: int, *, processor=None,
              batch_size: int = 32) -> list[float]:
    """Per-layer DToMe thresholds (one per merging layer, up to the feature layer) for ``model``.

    ``images``: pixel values (N, C, H, W) as the model's processor makes them, or PIL images together
    with ``processor``. ``target_removed``: tokens removed per layer, on average over the images. AnyRes
    models (LLaVA-NeXT, OneVision) calibrate on every base image and crop, each an encoder sequence of its
    own as when DyMU runs (the processor's all-zero padding crops are left out).
    """
    if isinstance(target_removed, bool) or not isinstance(target_removed, int) or target_removed < 1:
        raise ValueError(f"target_removed must be an int >= 1 (tokens merged per encoder layer), "
                         f"got {target_removed!r}")
    adapter = adapter_for(model)
    matchers: list[_BatchLevelMatcher] = []  # one per batch, made when the encoder call starts

    def make(geometry: EncoderGeometry) -> _BatchLevelMatcher:
        matchers.append(_BatchLevelMatcher(target_removed, geometry))
        return matchers[-1]

    merging = EncoderMerging(adapter.merge_target(), make)
    for pixels in _pixel_batches(model, images, processor, batch_size):
        with torch.no_grad(), merging.installed():
            merging.target.tower(pixels)
    per_batch = [matcher.thresholds for matcher in matchers]
    if not per_batch:
        raise ValueError("calibrate needs at least one image")
    return [sum(layer) / len(per_batch) for layer in zip(*per_batch)]


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


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--images must be a folder of images, got {str(path)!r}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(path)!r}")
    return files


class _LazyImages(Sequence):
    """Image files opened only when their batch is processed (a calibration set can be large)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        with Image.open(self.files[index]) as image:
            return image.convert("RGB")


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vtr calibrate``."""
    parser.add_argument("--model", required=True, help="a checkpoint (path or hub id) or a built-in tiny model name")
    parser.add_argument("--images", required=True, help="a folder of calibration images (the reference used ~250K)")
    parser.add_argument("--target-removed", type=int, required=True,
                        help="tokens removed per encoder layer on average (LLaVA-1.5 DyMU-low/mid/high: 21/16/8)")
    parser.add_argument("--out", required=True, help="the JSON file to write (pass it to dymu as thresholds=FILE)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch-level merging pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def run_calibrate(args: argparse.Namespace) -> int:
    """``vtr calibrate``: calibrate thresholds on a folder of images and write them as JSON."""
    from vtr.demo import load

    files = image_files(args.images)
    model, processor = load(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    thresholds = calibrate(model, _LazyImages(files), args.target_removed, processor=processor,
                           batch_size=args.batch_size)
    record = {"model": args.model, "model_type": model.config.model_type, "images": len(files),
              "target_removed": args.target_removed, "batch_size": args.batch_size, "dtype": args.dtype,
              "thresholds": thresholds}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(thresholds)} thresholds from {len(files)} images -> {args.out}: "
          f"{', '.join(f'{t:.4f}' for t in thresholds)}")
    return 0
