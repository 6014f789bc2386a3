"""Calibrate the shipped tiny LLaVA's DyMU thresholds (``vtr/assets/tiny_llava_synth/dymu_r{N}.json``).

    python scripts/calibrate_tiny.py [--levels 8,16,32] [--scenes 256]

Renders ``--scenes`` scenes of the synthetic benchmark's train split (the demo scores the test split)
into a temporary folder and runs ``vtr calibrate`` on them once per level (tokens merged per encoder
layer on average), writing next to the model, where ``vtr demo`` finds them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from vtr.assets import DYMU_FILE, NAME, TINY_LLAVA_SYNTH
from vtr.cli import main as vtr_main
from vtr.eval import synthetic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="8,16,32", help="target_removed levels, comma-separated (default 8,16,32)")
    parser.add_argument("--scenes", type=int, default=256, help="train-split scenes to calibrate on (default 256)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for item in synthetic.samples("train", args.scenes):
            item.image().save(Path(folder) / f"{item.index:05d}.png")
        for level in args.levels.split(","):
            out = TINY_LLAVA_SYNTH / DYMU_FILE.format(int(level))
            code = vtr_main(["calibrate", "--model", NAME, "--images", folder, "--target-removed", level,
                             "--out", str(out)])
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
