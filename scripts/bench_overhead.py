"""vtr's own cost per call on shape proxies of real checkpoints: ops beyond the model, host ms, launches.

    python scripts/bench_overhead.py                         # every preset, every method that applies
    python scripts/bench_overhead.py --presets llava-1.5-7b --methods divprune,fastv
    python scripts/bench_overhead.py --json overhead.json --markdown overhead.md
    python scripts/bench_overhead.py --doc docs/benchmarks.md   # rewrite the tables there in place
    python scripts/bench_overhead.py --doc docs/benchmarks.md --summary README.md   # and README's summary

A shape proxy keeps the checkpoint's visual geometry and depth with tiny widths (see
``vtr.measure.presets.shape_proxy``), so the dispatched-op counts are the real model's and a CPU runs
each call in well under a second. Images use ``--budget`` tokens (default 64); the video preset
(llava-onevision-7b, 32 frames) uses ``--video-budget`` (default 0.1). A method that cannot meet the
budget on this geometry (PDrop's stages at their default layers) runs at its own default instead, DyMU
runs on thresholds calibrated on the proxy's own image for that budget, and a configuration a method
refuses outright is listed as "not run" with the reason. On CUDA the rows add kernel launches and whether vtr's
sections synchronised the host. See ``vtr.measure.overhead`` for what each column counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics

import torch

import vtr
from vtr.adapters import adapter_for
from vtr.calibration import calibrate
from vtr.errors import UnreachableBudgetError
from vtr.measure.bench import BenchConfig, encoder_times
from vtr.measure.overhead import format_overhead, measure_overhead
from vtr.measure.presets import PRESETS, shape_proxy

IMAGE_METHODS = ["none", "random", "pool", "divprune", "hiprune", "visionzip", "fastv", "pdrop", "holitom_inner",
                 "tome", "dymu"]
VIDEO_METHODS = ["none", "divprune", "holitom", "holitom_inner", "fastv"]


def proxy(name: str, device: str):
    from transformers import AutoModelForImageTextToText

    preset = PRESETS[name]
    config, processor = preset.build()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(shape_proxy(config), attn_implementation="sdpa").eval()
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in preset.inputs(processor).items()}
    return model, inputs, preset


def _dymu_thresholds(model, inputs: dict, budget: int) -> list[float]:
    """DyMU takes thresholds, not a budget: calibrate them on the proxy's own pixels for the per-layer removal
    that would bring one image to ``budget`` tokens (``vtr calibrate``'s batch-level DToMe)."""
    geometry = adapter_for(model).merge_target().full_size_geometry()
    removed = max(1, round((geometry.features - budget) / geometry.merge_layers))
    return calibrate(model, inputs["pixel_values"], removed)


def _measure(model, inputs: dict, method: str, budget: int | float, repeats: int):
    if method == "dymu":
        thresholds = _dymu_thresholds(model, inputs, budget)
        return measure_overhead(model, inputs, [method], None, repeats=repeats, thresholds=thresholds)
    try:
        return measure_overhead(model, inputs, [method], budget, repeats=repeats)
    except UnreachableBudgetError:  # e.g. PDrop's stages at their default layers on this depth
        return measure_overhead(model, inputs, [method], None, repeats=repeats)


TABLES = "overhead-table"  # the full tables (docs/benchmarks.md)
SUMMARY = "overhead-summary"  # ops beyond the model, method x preset (README.md)
# the summary's columns, when measured: one checkpoint per family the hot-path budgets were set on
SUMMARY_PRESETS = ("llava-1.5-7b", "llava-next-7b", "llava-onevision-7b", "qwen2.5-vl-7b", "qwen3-vl-8b")


def replace_block(path: str, block: str, text: str) -> None:
    """Put ``text`` between the ``block`` start and end markers of the markdown file at ``path`` (markers kept)."""
    start_marker, end_marker = f"<!-- {block}:start", f"<!-- {block}:end -->"
    with open(path) as f:
        doc = f.read()
    start, end = doc.find(start_marker), doc.find(end_marker)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {start_marker} ... {end_marker} block to replace")
    head = doc[:doc.index("\n", start) + 1]
    with open(path, "w") as f:
        f.write(f"{head}\n{text}\n\n{doc[end:]}")


def summary_table(results: list[dict]) -> str:
    """Ops beyond the unwrapped model per method (rows) and preset (columns, those of ``SUMMARY_PRESETS`` that
    ran); "-" where a method did not run."""
    results = [result for result in results if result["preset"] in SUMMARY_PRESETS]
    ops = {(result["preset"], row["method"]): row["ops"] for result in results for row in result["rows"]}
    methods = list(dict.fromkeys(row["method"] for result in results for row in result["rows"]))
    header = ["method", *(f"{r['preset']} ({r['budget']})" for r in results)]
    body = [[method, *(f"{ops[r['preset'], method]:+d}" if (r["preset"], method) in ops else "-" for r in results)]
            for method in methods]
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    parser.add_argument("--methods", help="comma-separated methods (default: every method that applies)")
    parser.add_argument("--budget", type=int, default=64, help="tokens kept per image")
    parser.add_argument("--video-budget", type=float, default=0.1, help="fraction kept per video")
    parser.add_argument("--repeats", type=int, default=5, help="host-time repeats (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--doc", help="replace the tables between the overhead-table markers of this markdown file")
    parser.add_argument("--summary", help="replace the method x preset op table between the overhead-summary "
                                          "markers of this markdown file (e.g. README.md)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    results, sections = [], []
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    for name in args.presets.split(","):
        model, inputs, preset = proxy(name, args.device)
        video = preset.modality == "video"
        methods = args.methods.split(",") if args.methods else (VIDEO_METHODS if video else IMAGE_METHODS)
        budget = args.video_budget if video else args.budget
        encoder = statistics.median(encoder_times(model, inputs, BenchConfig(repeats=args.repeats)))
        print(f"\n{name} shape proxy ({preset.checkpoint}, {preset.modality}), budget {budget}, "
              f"encoder {encoder:.1f} ms, device {device_name}", flush=True)
        rows, refused = [], []
        for method in methods:
            try:
                rows += _measure(model, inputs, method, budget, args.repeats)
            except (vtr.ReductionError, ValueError) as error:
                refused.append(f"- {method}: not run: {error}")
                continue
            print(format_overhead(rows[-1:]).splitlines()[-1], flush=True)
        table = format_overhead(rows) + ("\n" + "\n".join(refused) if refused else "")
        sections.append(f"**{name}** ({preset.modality}, budget {budget}; the model's encoder: "
                        f"{encoder:.1f} ms)\n\n{table}")
        results.append({"preset": name, "budget": budget, "encoder_ms": encoder,
                        "rows": [dataclasses.asdict(r) for r in rows], "refused": refused})
    text = "\n\n".join(sections)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.doc:
        replace_block(args.doc, TABLES, text)
    if args.summary:
        replace_block(args.summary, SUMMARY, summary_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
