"""The ``vtr`` command: demo, methods, models."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _budget(text: str) -> int | float:
    """'64' -> 64 tokens; '0.25' -> a fraction. Validation happens in vtr.Budget."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from vtr.demo import format_table, load, run_demo

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, processor = load(args.model, device=args.device, dtype=dtype)
    rows = run_demo(model, processor, args.methods, [_budget(b) for b in args.budgets], args.max_new_tokens,
                    args.repeats)
    print(f"model: {args.model} ({model.config.model_type}, {args.device}, {args.dtype}); "
          f"prefill = median of {args.repeats} forward passes incl. vision encoder and reduction")
    print(format_table(rows))
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

    demo = sub.add_parser("demo", help="methods x budgets on one image: tokens kept, prefill time, answer")
    demo.add_argument("--model", default="llava",
                      help="a built-in tiny model (llava, qwen2_vl, qwen2_5_vl, ...) or a checkpoint dir / hub id")
    demo.add_argument("--methods", type=_csv, default=None, help="comma-separated (default: all)")
    demo.add_argument("--budgets", type=_csv, default=["0.5", "0.25", "0.11"],
                      help="comma-separated ints (tokens per image) or fractions in (0, 1]")
    demo.add_argument("--max-new-tokens", type=int, default=8)
    demo.add_argument("--repeats", type=int, default=3)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    demo.set_defaults(func=_cmd_demo)

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
