"""``vtr bench``: TTFT, prefill, vtr's overhead, decode rate, memory and FLOPs per method and budget."""

from __future__ import annotations

import argparse

from vtr.commands.common import DTYPES, Progress, names, numbers, torch_dtype

HELP = "TTFT / prefill / vtr overhead / decode / memory per method and budget"
# vtr.measure.presets' names, spelled out so `--help` need not import torch (a test keeps them equal)
PRESET_NAMES = ("llava-1.5-7b, llava-next-7b, llava-onevision-7b, qwen2.5-vl-7b, qwen3-vl-8b, qwen3-vl-30b-a3b, "
                "qwen3.5-27b, qwen3.5-35b-a3b, internvl3.5-8b, gemma-3-4b, gemma-3-12b, gemma-4-e4b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="llava",
                        help=f"a preset ({PRESET_NAMES}: real dimensions, random weights), a built-in tiny "
                             f"model, or a checkpoint directory / hub id")
    parser.add_argument("--methods", type=names, default=["divprune", "random", "fastv"],
                        help="comma-separated method names; '+' composes stages (e.g. holitom+holitom_inner)")
    parser.add_argument("--budgets", type=numbers, default=[0.25],
                        help="comma-separated ints (tokens kept per image/video) or fractions in (0, 1]; a "
                             "fraction reduces on every model")
    parser.add_argument("--layers", type=int, default=None,
                        help="truncate a preset's LLM to N layers, for CPU runs (default: all)")
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="truncate a preset's vision encoder to N layers (default: all)")
    parser.add_argument("--frames", type=int, default=None,
                        help="video frames for video presets (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median, quartiles)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated for the decode rate")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="model dtype")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file (default: no file)")


def load_for_bench(args: argparse.Namespace):
    """(model, inputs, description) for a preset, a tiny builder name, or a checkpoint."""
    from vtr.commands.loading import builtin_names, demo_inputs, load
    from vtr.measure.presets import PRESETS, build_preset

    Progress.note(f"loading {args.model} ...")
    if args.model in PRESETS:
        model, processor, preset = build_preset(args.model, args.device, torch_dtype(args.dtype), args.layers,
                                                args.vision_layers)
        inputs = preset.inputs(processor, frames=args.frames)
        kind = f"preset of {preset.checkpoint}, random weights"
    else:
        model, processor = load(args.model, device=args.device, dtype=torch_dtype(args.dtype),
                                also=list(PRESETS))
        inputs = demo_inputs(model, processor)
        kind = "built-in tiny model" if args.model in builtin_names() else "checkpoint"
    depth = model.config.get_text_config().num_hidden_layers
    return model, inputs.to(args.device), f"{args.model} ({kind}; {depth} LLM layers, {args.device}, {args.dtype})"


def run(args: argparse.Namespace) -> int:
    import torch

    from vtr.measure.bench import BenchConfig, format_rows, rows_to_json, run_bench

    model, inputs, description = load_for_bench(args)
    config = BenchConfig(warmup=args.warmup, repeats=args.repeats, new_tokens=args.new_tokens)
    progress = Progress(1 + len(args.budgets) * (1 + len(args.methods)))
    rows = run_bench(model, inputs, args.methods, args.budgets, config, progress=progress.step)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"model: {description}; device: {device}; median [q1, q3] of {args.repeats} after {args.warmup} warm-up")
    print(format_rows(rows))
    if args.json:
        meta = {"model": args.model, "description": description, "device": device, **vars(config)}
        with open(args.json, "w") as f:
            f.write(rows_to_json(rows, meta))
        Progress.note(f"rows written to {args.json}")
    return 0
