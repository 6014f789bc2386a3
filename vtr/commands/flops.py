"""``vtr flops``: the analytical FLOPs breakdown of one call; a preset runs its narrow shape proxy (same
token counts, real dimensions)."""

from __future__ import annotations

import argparse
import json

from vtr.commands.common import CommandError, Progress, number

HELP = "analytical FLOPs breakdown of one call (vision, projector, LLM, decode)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vtr.commands.bench import PRESET_NAMES

    parser.add_argument("--model", default="llava-1.5-7b",
                        help=f"a preset ({PRESET_NAMES}), a built-in tiny model or a checkpoint directory")
    parser.add_argument("--method", default=None, help="a method name (default: unreduced)")
    parser.add_argument("--budget", type=number, default=None,
                        help="tokens (int) or fraction kept per visual input (default: the method's own, if any)")
    parser.add_argument("--option", action="append", default=[],
                        help="method option key=value (repeatable; default: the method's defaults)")
    parser.add_argument("--new-tokens", type=int, default=1, help="tokens generated (the first comes from prefill)")
    parser.add_argument("--frames", type=int, default=None,
                        help="video frames for video presets (default: the preset's)")


def _options(items: list[str]) -> dict:
    """``["layer=2", "vtu=false", "layers=[1,3]", "allocation=global"]`` -> method options: numbers, booleans
    (either case), ``none`` and JSON lists parsed, anything else a string (wrap checks each option's type)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--option takes key=value, got {item!r}")
        try:
            options[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            options[key] = None if value.lower() == "none" else value
    return options


def run(args: argparse.Namespace) -> int:
    import torch

    import vtr
    from vtr.commands.loading import demo_inputs, load
    from vtr.measure.flops import call_flops, format_breakdown
    from vtr.measure.presets import PRESETS, shape_proxy

    options = _options(args.option)
    progress = Progress(3)
    progress.step(f"building {args.model}" + (" (shape proxy)" if args.model in PRESETS else ""))
    if args.model in PRESETS:
        from transformers import AutoModelForImageTextToText

        preset = PRESETS[args.model]
        config, processor = preset.build()
        model = AutoModelForImageTextToText.from_config(shape_proxy(config)).eval()
        inputs = preset.inputs(processor, frames=args.frames)
        source = f"preset of {preset.checkpoint} (token counts from its shape proxy)"
    else:
        model, processor = load(args.model, also=list(PRESETS))
        config, inputs = model.config, demo_inputs(model, processor)
        source = args.model
    if args.method not in (None, "none"):
        vtr.wrap(model, args.method, budget=args.budget, **options)
    progress.step("running the call once (token counts)")
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    progress.step("costing it")
    (breakdown,) = call_flops(model, inputs, new_tokens=args.new_tokens, config=config)
    method = vtr.stats(model).method if vtr.is_wrapped(model) else "unreduced"
    print(f"model: {source}; method: {method}; {args.new_tokens} generated tokens")
    if vtr.is_wrapped(model):
        sample = vtr.stats(model).samples[0]
        per_layer = f", last decoder layer {sample.visual_per_layer[-1]}" if sample.visual_per_layer else ""
        print(f"visual tokens: {sample.visual_before} -> {sample.visual_after} entering the LLM{per_layer}")
    print(format_breakdown(breakdown))
    return 0
