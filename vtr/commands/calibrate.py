"""``vtr calibrate``: per-layer DyMU thresholds from a folder of images, written as JSON.

The calibration itself is ``vtr.calibration.calibrate``; this reads the folder lazily (a calibration set
can be large) and records how the thresholds were made next to them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from vtr.commands.common import DTYPES, CommandError, Progress, torch_dtype

HELP = "per-layer DyMU merge thresholds from a folder of images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a checkpoint (path or hub id) or a built-in tiny model name")
    parser.add_argument("--images", required=True, help="a folder of calibration images (the reference used ~250K)")
    parser.add_argument("--target-removed", type=int, required=True,
                        help="tokens removed per encoder layer on average (LLaVA-1.5 DyMU-low/mid/high: 21/16/8)")
    parser.add_argument("--out", required=True, help="the JSON file to write (pass it to dymu as thresholds=FILE)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch-level merging pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype")


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise CommandError(f"--images must be a folder of images, got {str(path)!r}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CommandError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(path)!r}")
    return files


class _LazyImages(Sequence):
    """Image files opened only when their batch is processed, with a progress line per batch."""

    def __init__(self, files: list[Path], batch_size: int) -> None:
        self.files = files
        self.progress = Progress(-(-len(files) // batch_size))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image

        if isinstance(index, slice):
            indices = range(*index.indices(len(self)))
            self.progress.step(f"calibrating on images {indices.start + 1}-{indices.stop} of {len(self)}")
            return [self[i] for i in indices]
        with Image.open(self.files[index]) as image:
            return image.convert("RGB")


def run(args: argparse.Namespace) -> int:
    from vtr.calibration import calibrate
    from vtr.commands.loading import load

    files = image_files(args.images)
    model, processor = load(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    thresholds = calibrate(model, _LazyImages(files, args.batch_size), args.target_removed, processor=processor,
                           batch_size=args.batch_size)
    record = {"model": args.model, "model_type": model.config.model_type, "images": len(files),
              "target_removed": args.target_removed, "batch_size": args.batch_size, "dtype": args.dtype,
              "thresholds": thresholds}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(thresholds)} thresholds from {len(files)} images -> {args.out}: "
          f"{', '.join(f'{t:.4f}' for t in thresholds)}")
    return 0
