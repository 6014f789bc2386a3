"""``vtr models``: the supported model types, or the support matrix (model x image/video)."""

from __future__ import annotations

import argparse

HELP = "list supported model types"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="the support matrix (model x image/video) as a table")


def run(args: argparse.Namespace) -> int:
    import vtr
    from vtr.adapters import support_matrix_markdown

    print(support_matrix_markdown() if args.markdown else "\n".join(vtr.supported_models()))
    return 0
