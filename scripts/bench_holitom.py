"""Time HoliTom's outer stage (segmentation DP, temporal merge, DPC-KNN, attention top-k) on video sizes.

    python scripts/bench_holitom.py                 # CPU, and CUDA when available
    python scripts/bench_holitom.py --threads 1 --json out.json

Cases: 32 and 64 frames of 196 tokens (LLaVA-OneVision-7B after its 2x2 pooling), D=3584, retain ratio
0.10, tau 0.8. Two kinds of random features: ``noise`` (independent frames: every window is a single
frame, no clustering) and ``scenes`` (frames grouped in 4 scenes; inside a scene 70% of the positions
stay within a small perturbation of the scene's first frame, so the DP finds multi-frame windows and
DPC-KNN clusters their static tokens). Each timing is the median of --repeats runs after --warmup,
synchronised on CUDA, of one whole ``HoliTom.reduce`` call (attention scores are random).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from bench_select import report, time_call
from vtr.layout import Segment
from vtr.methods import HoliTom, VisualItem

FRAMES, SIDE, DIM = (32, 64), 14, 3584


def video(frames: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(frames * 196, DIM) features of one video (see the module docstring for the kinds)."""
    n = SIDE * SIDE
    x = torch.randn(frames, n, DIM, generator=generator)
    if kind == "scenes":
        per_scene = frames // 4
        for start in range(0, frames, per_scene):
            static = torch.rand(n, generator=generator) < 0.7
            anchor = x[start, static]
            x[start:start + per_scene, static] = anchor + 0.1 * torch.randn(per_scene, int(static.sum()), DIM,
                                                                             generator=generator)
    return x.view(frames * n, DIM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 on a loaded machine")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    dtype = getattr(torch, args.dtype)
    method = HoliTom(budget=0.1)
    results = []
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        label = (f"cpu ({name}, {torch.get_num_threads()} threads)" if device.type == "cpu" else f"cuda ({name})")
        for frames in FRAMES:
            for kind in ("noise", "scenes"):
                generator = torch.Generator().manual_seed(frames)
                features = video(frames, kind, generator).to(device, dtype)
                n = features.shape[0]
                scores = torch.rand(n, generator=generator).to(device)
                item = VisualItem(features, (Segment(0, (frames, SIDE, SIDE)),), "video", 0,
                                  {"holitom": (scores, scores.unsqueeze(1))})
                windows, _ = method.segment(item)
                kept = method.reduce(item).kept.numel()
                times = time_call(lambda: method.reduce(item), device, args.warmup, args.repeats)
                results.append(dict(device=label, frames=frames, kind=kind, n=n, dim=DIM, dtype=args.dtype,
                                    segments=len(windows), kept=kept, median_ms=statistics.median(times),
                                    min_ms=min(times), max_ms=max(times), repeats=args.repeats))
    report(results, [("device", "device", "<34"), ("frames", "frames", ">6"), ("kind", "kind", "<7"), ("n", "N", ">6"),
                     ("segments", "segments", ">8"), ("kept", "kept", ">5")], args.json)


if __name__ == "__main__":
    main()
