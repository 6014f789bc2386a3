"""Start-up time of the ``vtr`` command: wall time of fresh processes, median of several runs.

    python scripts/bench_startup.py [--repeats 7] [-- COMMAND ...]     e.g. -- "--help" "methods"

Each run is a new interpreter running ``vtr.cli`` as the ``vtr`` command does, in an empty directory
(so the ``vtr`` measured is the one this interpreter imports: installed, or first on ``PYTHONPATH``);
nothing is cached in-process, and the OS page cache is warm after the first run, which is what a user
typing commands sees. Prints one line
per command: median, min and max seconds, and whether torch / transformers got imported. A
benchmark, not a test: the target (``vtr --help`` and ``vtr methods`` under 1 s) is checked by reading
its output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_COMMANDS = ["--help", "methods", "demo --help", "sweep --help"]
# printed by the child after the command ran: which heavy packages the command imported
PROBE = ("import sys, runpy; sys.argv = ['vtr'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('vtr.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('\\nHEAVY', 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)")


def time_command(args: list[str], repeats: int) -> tuple[list[float], str]:
    times, heavy = [], ""
    with tempfile.TemporaryDirectory() as empty:
        for _ in range(repeats):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=empty,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            times.append(time.perf_counter() - start)
            heavy = next((line for line in done.stderr.splitlines() if line.startswith("HEAVY")), "HEAVY ? ?")
    return times, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes per command (default 7)")
    parser.add_argument("commands", nargs="*", default=DEFAULT_COMMANDS,
                        help=f"vtr arguments, one quoted string per command, after -- (default {DEFAULT_COMMANDS})")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; {args.repeats} fresh processes per command")
    for command in args.commands:
        times, heavy = time_command(command.split(), args.repeats)
        _, torch_loaded, transformers_loaded = heavy.split()
        print(f"vtr {command:<14} median {statistics.median(times):.2f} s  (min {min(times):.2f}, "
              f"max {max(times):.2f}); imports torch: {torch_loaded}, transformers: {transformers_loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
