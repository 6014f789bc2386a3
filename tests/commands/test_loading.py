"""`--model` names: a missing path, a folder that is no checkpoint or an unknown name is a one-line error
that lists the built-in models, before transformers sees it."""

from __future__ import annotations

import pytest

from vtr.cli import main
from vtr.commands.common import CommandError
from vtr.commands.loading import builtin_names, load


@pytest.mark.parametrize("name, says", [
    ("./no/such/checkpoint", "the path does not exist"),
    ("/tmp/vtr-missing-checkpoint-dir", "the path does not exist"),
    ("~/vtr-missing/model.safetensors", "the path does not exist"),
    ("lava", "not a built-in model"),
])
def test_a_name_that_is_no_model_says_so_and_lists_the_built_in_names(name, says):
    with pytest.raises(CommandError, match=says) as error:
        load(name)
    assert all(builtin in str(error.value) for builtin in builtin_names())


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CommandError, match="a directory without config.json"):
        load(str(tmp_path))


def test_the_command_reports_it_without_a_traceback(capsys):
    assert main(["demo", "--model", "./no/such/dir"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vtr demo: error: --model ./no/such/dir: the path does not exist")
    assert "tiny-llava-synth" in error and "qwen2_5_vl" in error and "Traceback" not in error
    assert main(["bench", "--model", "./no/such/dir"]) == 2
    assert "llava-1.5-7b" in capsys.readouterr().err  # bench also takes presets: they are listed
