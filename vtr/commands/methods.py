"""``vtr methods``: the reduction methods, one line each, without importing torch.

The registry (``vtr.methods.REGISTRY``) needs torch; this listing must start in well under a second, so
it keeps its own one-line summaries, in the order a user reads them (pre-LLM, in-LLM, vision encoder).
A test checks that the names here are exactly ``vtr.available_methods()``.
"""

from __future__ import annotations

import argparse

HELP = "list reduction methods (name, stage, what it keeps)"
SUMMARIES = {
    "none": "pre-LLM     everything: the unreduced reference (bit-identical to the unwrapped model)",
    "divprune": "pre-LLM     the most diverse tokens (max-min cosine distance of the features; DivPrune)",
    "random": "pre-LLM     uniformly random tokens, seeded",
    "pool": "pre-LLM     averages over boxes of the token grid (the VTC-Bench downsampling baseline)",
    "hiprune": "pre-LLM     encoder-attention anchors, their grid neighbours and registers (HiPrune)",
    "visionzip": "pre-LLM     dominant tokens by encoder attention plus merged contextual tokens (VisionZip)",
    "holitom": "pre-LLM     video: temporal windows, static positions merged over time, clusters (HoliTom)",
    "fastv": "in-LLM      at layer K, the tokens the last prompt token attends to most (FastV)",
    "pdrop": "in-LLM      stages of attention-ranked drops at several layers (PyramidDrop)",
    "holitom_inner": "in-LLM      at layer K, attention-ranked tokens, the others folded into them (HoliTom)",
    "tome": "vision      bipartite soft matching in the encoder to a budget (ToMe)",
    "dymu": "vision      threshold merging in the encoder, token count per image (DyMU; `vtr calibrate`)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")


def run(args: argparse.Namespace) -> int:
    width = max(map(len, SUMMARIES))
    for name in sorted(SUMMARIES):
        print(name if args.names else f"{name:<{width}}  {SUMMARIES[name]}")
    return 0
