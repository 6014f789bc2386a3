"""``vtr show``: one PNG of what each method kept of an image or a video, per budget.

Rows: the unreduced input, then each method; columns: the budgets. In every cell dropped patches are
dimmed, kept ones unchanged, tokens merged into one are drawn in one colour, and after an in-LLM method
only the tokens reaching the last decoder layer stay bright; the title says visual tokens before and
after and what the model answered. AnyRes images show the base image and the crops in their places,
videos a strip of frames. Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse

from vtr.assets import NAME as TRAINED
from vtr.commands.common import DTYPES, CommandError, Progress, names, numbers, torch_dtype

DEFAULT_QUESTION = "what is in the image ?"
HELP = "a picture of the patches each method keeps or merges, per budget, for one image or video"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=TRAINED,
                        help=f"{TRAINED} (the shipped trained tiny LLaVA), a built-in random tiny model named "
                             f"after its family (llava, qwen2_5_vl, gemma4, ...: vtr.testing.BUILDERS) or a checkpoint "
                             f"directory / hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file")
    source.add_argument("--video", help="a video file")
    source.add_argument("--scene", type=int, help="synthetic test scene N of vtr.eval.synthetic (asked its own "
                                                  "question unless --question is given): a picture without a file")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled evenly from --video")
    parser.add_argument("--question", help="the question asked about it (default: 'what is in the image ?')")
    parser.add_argument("--methods", type=names, default=["divprune", "visionzip", "fastv"],
                        help="comma-separated method names (see `vtr methods`)")
    parser.add_argument("--budgets", type=numbers, default=[0.25, 0.11],
                        help="comma-separated ints (tokens kept per image/video) or fractions in (0, 1]")
    parser.add_argument("--out", default="kept.png", help="the PNG to write")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated per answer")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype")


def run(args: argparse.Namespace) -> int:
    import vtr
    from vtr.commands.loading import load
    from vtr.show.figure import matplotlib_figure_class

    try:
        matplotlib_figure_class()
    except ImportError as error:
        raise CommandError(str(error)) from None
    for budget in args.budgets:
        try:
            vtr.Budget(budget)
        except ValueError as error:
            raise CommandError(f"--budgets {budget}: {error}") from None
    unknown = sorted(set(args.methods) - set(vtr.available_methods()))
    if unknown:
        raise CommandError(f"--methods: unknown {unknown}; available: {', '.join(vtr.available_methods())}")
    if args.frames < 1:
        raise CommandError(f"--frames {args.frames}: sample at least one frame")
    Progress.note(f"loading {args.model}")
    model, processor = load(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    Progress.note(f"running {len(args.methods)} method(s) x {len(args.budgets)} budget(s)")
    source, question = args.image or args.video, args.question or DEFAULT_QUESTION
    if args.scene is not None:
        from vtr.eval import synthetic

        if args.scene < 0:
            raise CommandError(f"--scene {args.scene}: scenes are numbered from 0")
        sample = synthetic.sample("test", args.scene)
        source, question = sample.image(), args.question or sample.question
    figure = vtr.show(model, processor, source, methods=args.methods, budgets=args.budgets,
                      question=question, frames=args.frames if args.video else None,
                      max_new_tokens=args.max_new_tokens)
    figure.savefig(args.out)
    print(f"wrote {args.out}")
    return 0
