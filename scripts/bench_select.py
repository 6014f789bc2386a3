"""Time the selection step of the pre-LLM methods on realistic sizes (no model needed).

    python scripts/bench_select.py                 # CPU, and CUDA when available
    python scripts/bench_select.py --json out.json

Cases: one LLaVA-1.5 image (N=576 tokens, D=4096, keep 64) and a 32-frame video as LLaVA-OneVision
sees it (N=32x196=6272, D=3584, keep 10% = 627). Each timing is the median of --repeats runs after
--warmup runs, synchronised on CUDA; it covers the whole method call (distance matrix included).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from vtr.methods import DivPrune, Pool, RandomSelect, VisualItem

CASES = [  # (label, grid (t, h, w), feature dim, kept tokens)
    ("llava-1.5 image", (1, 24, 24), 4096, 64),
    ("32-frame video", (32, 14, 14), 3584, 627),
]


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    dtype = getattr(torch, args.dtype)
    results = []
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        threads = torch.get_num_threads()
        for label, grid, dim, keep in CASES:
            n = grid[0] * grid[1] * grid[2]
            features = torch.randn(n, dim, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            item = VisualItem.on_grid(features, grid, "video" if grid[0] > 1 else "image")
            for method in (DivPrune(budget=keep), RandomSelect(budget=keep), Pool(budget=keep)):
                times = time_call(lambda: method.reduce(item), device, args.warmup, args.repeats)
                results.append(dict(device=f"{device.type} ({name}, {threads} threads)" if device.type == "cpu"
                                    else f"cuda ({name})", case=label, n=n, dim=dim, keep=keep,
                                    method=method.name, dtype=args.dtype, median_ms=statistics.median(times),
                                    min_ms=min(times), max_ms=max(times), repeats=args.repeats))
    report(results, [("device", "device", "<34"), ("case", "case", "<16"), ("n", "N", ">5"), ("dim", "D", ">5"),
                     ("keep", "k", ">4"), ("method", "method", "<9")], args.json)


def report(results: list[dict], columns: list[tuple[str, str, str]], json_path: str | None) -> None:
    """Print one row per result (``columns``: key, header, format spec) plus the timings; write the JSON."""
    header = " ".join(f"{title:{spec}}" for _, title, spec in columns) + f" {'median ms':>10} {'min-max ms':>17}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(" ".join(f"{r[key]:{spec}}" for key, _, spec in columns)
              + f" {r['median_ms']:>10.2f} {r['min_ms']:>8.2f}-{r['max_ms']:<8.2f}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
