"""`vtr methods` lists exactly the registry's methods, without importing torch."""

from __future__ import annotations

import vtr
from vtr.cli import main
from vtr.commands.methods import SUMMARIES


def test_the_listing_names_every_registered_method(capsys):
    assert sorted(SUMMARIES) == vtr.available_methods()
    assert main(["methods", "--names"]) == 0
    assert capsys.readouterr().out.split() == vtr.available_methods()
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == vtr.available_methods()
    assert all(line.split()[1] in ("pre-LLM", "in-LLM", "vision") for line in lines)
