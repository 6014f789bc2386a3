"""The ``vtr`` command: parses the arguments and dispatches to one module of ``vtr.commands`` per command.

Building the parser imports only the command modules, which import nothing heavy at module level, so
``vtr --help``, ``vtr methods`` and ``vtr CMD --help`` start without torch or transformers. A user error
(a bad model path, an unknown method, a budget out of range, a method refusing a model, ...) ends the
command with ``vtr CMD: error: <what and how to fix it>`` and exit code 2, not a traceback; set
``VTR_TRACEBACK=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMMANDS = ("demo", "show", "bench", "flops", "sweep", "calibrate", "methods", "models")  # modules of vtr.commands


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help (lists as the comma-separated text the option takes),
    unless the help already says what the default is or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if not action.option_strings or default in (None, False, "", [], argparse.SUPPRESS) or "default" in text:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtr", description="Training-free visual-token reduction for HF VLMs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"vtr.commands.{name}")
        summary = module.__doc__.split("\n\n")[0].replace("``", "`")
        command = sub.add_parser(name, help=module.HELP, description=summary, formatter_class=_DefaultsFormatter)
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user asked for something that cannot be done (their messages say why)."""
    from vtr.commands.common import CommandError
    from vtr.errors import ReductionError, UnsupportedModelError, VideoDecodeError

    errors = [CommandError, ReductionError, UnsupportedModelError, VideoDecodeError, ValueError,
              FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError]
    if "vtr.eval.plan" in sys.modules:  # only a sweep can raise it; importing it here would slow start-up
        errors.append(sys.modules["vtr.eval.plan"].SweepError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"vtr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not isinstance(error, _user_errors()) or os.environ.get("VTR_TRACEBACK"):
            raise
        print(f"vtr {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
