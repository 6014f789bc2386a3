"""`vtr flops` on a preset: its real dimensions through the shape proxy, with progress lines."""

from __future__ import annotations

from vtr.cli import main


def test_flops_command_costs_a_preset_with_its_real_dimensions(capsys):
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "divprune", "--budget", "64",
                 "--new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert "visual tokens: 576 -> 64 entering the LLM" in captured.out
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines() if line and line.split()[0] in
            ("vision", "reduction", "total")}
    assert float(rows["vision"][1]) > 0.3  # CLIP-L/336 at its real width: ~0.38 TFLOPs
    assert float(rows["reduction"][1]) > 0 and float(rows["total"][1]) > float(rows["vision"][1])
    assert [line.split(" (")[0] for line in captured.err.splitlines() if line.startswith("[")] == [
        "[1/3] building llava-1.5-7b", "[2/3] running the call once", "[3/3] costing it"]


def test_a_bad_option_is_a_one_line_error(capsys):
    assert main(["flops", "--model", "llava", "--method", "fastv", "--budget", "8", "--option", "layer"]) == 2
    assert capsys.readouterr().err.startswith("vtr flops: error: --option takes key=value, got 'layer'")


def test_option_values_are_parsed_so_wrap_can_check_their_types(capsys):
    from vtr.commands.flops import _options

    assert _options(["layer=2", "ratio=0.25", "vtu=False", "reference_quirks=true", "layers=[1,3]",
                     "allocation=global", "object_layer=none"]) == dict(
        layer=2, ratio=0.25, vtu=False, reference_quirks=True, layers=[1, 3], allocation="global", object_layer=None)
    # a typo fails at wrap, as one line
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "fastv", "--budget", "64",
                 "--option", "layer=two"]) == 2
    assert "fastv layer must be an int >= 1, got 'two'" in capsys.readouterr().err
