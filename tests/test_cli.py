"""The `vtr` command: every command and option documented with its default, a start-up that imports
neither torch nor transformers for help and listings, user errors as one line without a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import vtr
from vtr.cli import COMMANDS, build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_has_a_help_text_that_shows_its_default():
    commands = _subcommands()
    assert list(commands) == list(COMMANDS)
    for name, parser in commands.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"vtr {name} {action.option_strings}: no help text"
            if action.default not in (None, False, "", []) and not action.required:
                assert "default" in formatter._get_help_string(action), f"vtr {name} {action.option_strings}"


def test_help_shows_list_defaults_as_the_option_takes_them(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "(default: 0.5,0.25,0.11)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["methods"], ["demo", "--help"], ["sweep", "--help"]])
def test_help_and_listings_import_neither_torch_nor_transformers(argv):
    code = ("import sys\nfrom vtr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


def test_models_list(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == vtr.supported_models()


def test_a_user_error_is_one_line_and_exit_code_2_a_bug_keeps_its_traceback(capsys, monkeypatch):
    assert main(["demo", "--model", "llava", "--methods", "fastv", "--budgets", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vtr demo: error: --budgets 0:") and error.count("\n") == 1

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr("vtr.commands.models.run", broken)
    with pytest.raises(KeyError):
        main(["models"])


def test_ctrl_c_ends_the_command_with_a_line_and_exit_code_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("vtr.commands.models.run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "vtr models: interrupted\n"
