"""The ``vtr`` command: demo, bench, flops, sweep, calibrate, methods, models."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _budget(text: str) -> int | float:
    """'64' -> 64 tokens; '0.25' -> a fraction. Validation happens in vtr.Budget."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _cmd_demo(args: argparse.Namespace) -> int:
    from vtr.demo import TRAINED, format_accuracy_table, format_table, load, run_accuracy_demo, run_demo

    model, processor = load(args.model, device=args.device, dtype=_dtype(args.dtype))
    budgets = [_budget(b) for b in args.budgets]
    if args.model == TRAINED:
        rows = run_accuracy_demo(model, processor, args.methods, budgets, args.samples)
        print(f"model: {args.model} (vtr.assets, trained on vtr.eval.synthetic; {args.device}, {args.dtype}); "
              f"{args.samples} synthetic test samples, greedy one-word answers; FLOPs: vtr.measure.flops, per sample")
        print(format_accuracy_table(rows))
        return 0
    rows = run_demo(model, processor, args.methods, budgets, args.max_new_tokens, args.repeats)
    print(f"model: {args.model} ({model.config.model_type}, {args.device}, {args.dtype}); "
          f"prefill = median of {args.repeats} forward passes incl. vision encoder and reduction")
    print(format_table(rows))
    return 0


DTYPES = ("float32", "bfloat16", "float16")


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _load_for_bench(args: argparse.Namespace):
    """(model, inputs, description) for a preset, a tiny builder name, or a checkpoint."""
    from vtr.measure.presets import PRESETS, build_preset

    if args.model in PRESETS:
        model, processor, preset = build_preset(args.model, args.device, _dtype(args.dtype), args.layers,
                                                args.vision_layers)
        inputs = preset.inputs(processor, frames=args.frames)
        kind = f"preset of {preset.checkpoint}, random weights"
    else:
        from vtr.demo import demo_inputs, load

        model, processor = load(args.model, device=args.device, dtype=_dtype(args.dtype))
        inputs = demo_inputs(model, processor)
        kind = "tiny built-in model" if "/" not in args.model else "checkpoint"
    depth = model.config.get_text_config().num_hidden_layers
    return model, inputs.to(args.device), f"{args.model} ({kind}; {depth} LLM layers, {args.device}, {args.dtype})"


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from vtr.measure.bench import BenchConfig, format_rows, rows_to_json, run_bench

    model, inputs, description = _load_for_bench(args)
    config = BenchConfig(warmup=args.warmup, repeats=args.repeats, new_tokens=args.new_tokens)
    rows = run_bench(model, inputs, args.methods, [_budget(b) for b in args.budgets], config)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"model: {description}; device: {device}; median [q1, q3] of {args.repeats} after {args.warmup} warm-up")
    print(format_rows(rows))
    if args.json:
        meta = {"model": args.model, "description": description, "device": device, **vars(config)}
        with open(args.json, "w") as f:
            f.write(rows_to_json(rows, meta))
    return 0


def _options(items: list[str]) -> dict:
    """``["layer=2", "vtu=false", "layers=[1,3]", "allocation=global"]`` -> method options: numbers, booleans
    (either case), ``none`` and JSON lists parsed, anything else a string (wrap checks each option's type)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option takes key=value, got {item!r}")
        try:
            options[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            options[key] = None if value.lower() == "none" else value
    return options


def _cmd_flops(args: argparse.Namespace) -> int:
    """FLOPs of one call: a preset runs its narrow shape proxy (same token counts, real dimensions)."""
    import torch

    import vtr
    from vtr.measure.flops import call_flops, format_breakdown
    from vtr.measure.presets import PRESETS, shape_proxy

    if args.model in PRESETS:
        from transformers import AutoModelForImageTextToText

        preset = PRESETS[args.model]
        config, processor = preset.build()
        model = AutoModelForImageTextToText.from_config(shape_proxy(config)).eval()
        inputs = preset.inputs(processor, frames=args.frames)
        source = f"preset of {preset.checkpoint} (token counts from its shape proxy)"
    else:
        from vtr.demo import demo_inputs, load

        model, processor = load(args.model)
        config, inputs = model.config, demo_inputs(model, processor)
        source = args.model
    if args.method not in (None, "none"):
        vtr.wrap(model, args.method, budget=None if args.budget is None else _budget(args.budget),
                 **_options(args.option))
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    (breakdown,) = call_flops(model, inputs, new_tokens=args.new_tokens, config=config)
    method = vtr.stats(model).method if vtr.is_wrapped(model) else "unreduced"
    print(f"model: {source}; method: {method}; {args.new_tokens} generated tokens")
    if vtr.is_wrapped(model):
        sample = vtr.stats(model).samples[0]
        per_layer = f", last decoder layer {sample.visual_per_layer[-1]}" if sample.visual_per_layer else ""
        print(f"visual tokens: {sample.visual_before} -> {sample.visual_after} entering the LLM{per_layer}")
    print(format_breakdown(breakdown))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import vtr

    print("\n".join(vtr.available_methods()))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import vtr
    from vtr.adapters import support_matrix_markdown

    print(support_matrix_markdown() if args.markdown else "\n".join(vtr.supported_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtr", description="Training-free visual-token reduction for HF VLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    from vtr.assets import NAME as TRAINED

    demo = sub.add_parser("demo", help="methods x budgets: accuracy on the synthetic benchmark (default model), or "
                                       "tokens kept, prefill time and answer on one image")
    demo.add_argument("--model", default=TRAINED,
                      help=f"{TRAINED} (the shipped trained tiny LLaVA: accuracy table), a built-in random tiny model "
                           f"(llava, qwen2_vl, qwen2_5_vl, ...: mechanics table) or a checkpoint dir / hub id")
    demo.add_argument("--samples", type=int, default=200, help=f"synthetic test samples ({TRAINED} only)")
    demo.add_argument("--methods", type=_csv, default=None, help="comma-separated (default: all)")
    demo.add_argument("--budgets", type=_csv, default=["0.5", "0.25", "0.11"],
                      help="comma-separated ints (tokens per image) or fractions in (0, 1]")
    demo.add_argument("--max-new-tokens", type=int, default=8, help="mechanics table only")
    demo.add_argument("--repeats", type=int, default=3, help="prefill timing repeats, mechanics table only")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--dtype", default="float32", choices=DTYPES)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="TTFT / prefill / vtr overhead / decode / memory per method and budget")
    bench.add_argument("--model", default="llava",
                       help="a preset (llava-1.5-7b, llava-next-7b, llava-onevision-7b, qwen2.5-vl-7b, qwen3-vl-8b), "
                            "a built-in tiny model, or a checkpoint dir / hub id")
    bench.add_argument("--methods", type=_csv, default=["divprune", "random", "fastv"])
    bench.add_argument("--budgets", type=_csv, default=["64"])
    bench.add_argument("--layers", type=int, default=None, help="truncate a preset's LLM to N layers (CPU runs)")
    bench.add_argument("--vision-layers", type=int, default=None, help="truncate a preset's vision encoder")
    bench.add_argument("--frames", type=int, default=None, help="video frames for video presets")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--new-tokens", type=int, default=16, help="tokens generated for the decode rate")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    bench.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    bench.set_defaults(func=_cmd_bench)

    flops = sub.add_parser("flops", help="analytical FLOPs breakdown of one call (vision, projector, LLM, decode)")
    flops.add_argument("--model", default="llava-1.5-7b", help="a preset, a built-in tiny model or a checkpoint")
    flops.add_argument("--method", default=None, help="a method name (default: unreduced)")
    flops.add_argument("--budget", default=None, help="tokens (int) or fraction kept per visual input")
    flops.add_argument("--option", action="append", default=[], help="method option key=value (repeatable)")
    flops.add_argument("--new-tokens", type=int, default=1, help="tokens generated (the first comes from prefill)")
    flops.add_argument("--frames", type=int, default=None, help="video frames for video presets")
    flops.set_defaults(func=_cmd_flops)

    from vtr.eval.sweep import add_sweep_arguments, run_sweep

    sweep = sub.add_parser("sweep", help="methods x budgets x tasks through lmms-eval: resumable, with a summary")
    add_sweep_arguments(sweep)
    sweep.set_defaults(func=run_sweep)

    from vtr.vision.calibrate import add_calibrate_arguments, run_calibrate

    calibrate = sub.add_parser("calibrate", help="per-layer DyMU merge thresholds from a folder of images")
    add_calibrate_arguments(calibrate)
    calibrate.set_defaults(func=run_calibrate)

    sub.add_parser("methods", help="list reduction methods").set_defaults(func=_cmd_methods)
    models = sub.add_parser("models", help="list supported model types")
    models.add_argument("--markdown", action="store_true", help="the support matrix (model x image/video) as a table")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "methods", "unset") is None:
        import vtr

        args.methods = [m for m in vtr.available_methods() if m != "none"]  # "none" is the first row anyway
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
