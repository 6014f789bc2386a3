"""The `vtr` command, including a checkpoint saved with save_pretrained and loaded back like a real one."""

from __future__ import annotations

import pytest

import vtr
from vtr import testing
from vtr.cli import main


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]


def test_default_demo_scores_the_trained_model_on_the_synthetic_benchmark(capsys):
    assert main(["demo", "--samples", "10", "--methods", "random,fastv,tome", "--budgets", "0.5,0.11"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[:4] == ["method", "budget", "visual tokens (LLM in / last layer)", "accuracy"]
    by_key = {(r[0], r[1]): r for r in rows}
    assert [r[:2] for r in rows] == [["none", "-"], *([m, b] for m in ("random", "fastv", "tome") for b in ("0.5", "0.11"))]
    assert by_key[("none", "-")][2] == "196 / 196" and by_key[("none", "-")][4] == "100%"
    assert by_key[("random", "0.5")][2] == "98 / 98" and by_key[("random", "0.11")][2] == "22 / 22"
    assert by_key[("fastv", "0.11")][2] == "196 / 22"  # in-LLM: all enter the LLM, 22 reach the last layer
    for method, budget in [("random", "0.5"), ("random", "0.11"), ("fastv", "0.5")]:
        accuracy = float(by_key[(method, budget)][3])
        assert 0 <= accuracy <= 1 and int(by_key[(method, budget)][6].rstrip("%")) < 100  # cheaper than none


def test_demo_on_a_random_tiny_model_prints_a_table_for_every_method_and_budget(capsys):
    assert main(["demo", "--model", "llava", "--budgets", "0.5,8", "--max-new-tokens", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "method"
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]
    assert rows[0][:4] == ["none", "-", "64", "64"]
    methods = set(vtr.available_methods()) - {"none"}
    assert {(r[0], r[1]) for r in rows[1:]} == {(m, b) for m in methods for b in ("0.5", "8")}
    by_key = {(r[0], r[1]): r for r in rows}
    assert by_key[("divprune", "8")][3] == "8" and by_key[("random", "0.5")][3] == "32"
    assert by_key[("fastv", "8")][3:5] == ["64", "8"]  # in-LLM: all enter the LLM, 8 reach the last layer
    assert by_key[("pdrop", "8")][-1].startswith("not run: pdrop cannot average 8")  # unreachable, said so


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_demo_on_a_checkpoint_saved_with_save_pretrained(tmp_path, capsys, name):
    model, processor = testing.build(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert main(["demo", "--model", str(tmp_path), "--methods", "divprune", "--budgets", "4",
                 "--max-new-tokens", "2", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| divprune")]
    assert [cell.strip() for cell in rows[0].split("|")[1:5]] == ["divprune", "4", "48" if "qwen" in name else "64", "4"]


def test_methods_and_models_lists(capsys):
    main(["methods"])
    assert capsys.readouterr().out.split() == vtr.available_methods()
    main(["models"])
    assert capsys.readouterr().out.split() == vtr.supported_models()


def test_bad_budget_on_the_command_line():
    with pytest.raises(ValueError, match="fraction"):
        main(["demo", "--methods", "random", "--budgets", "1.5", "--repeats", "1"])


def test_option_values_are_parsed_so_wrap_can_check_their_types():
    from vtr.cli import _options

    assert _options(["layer=2", "ratio=0.25", "vtu=False", "reference_quirks=true", "layers=[1,3]",
                     "allocation=global", "object_layer=none"]) == dict(
        layer=2, ratio=0.25, vtu=False, reference_quirks=True, layers=[1, 3], allocation="global", object_layer=None)
    with pytest.raises(ValueError, match="fastv layer must be an int >= 1, got 'two'"):  # a typo fails at wrap
        main(["flops", "--model", "llava-1.5-7b", "--method", "fastv", "--budget", "64", "--option", "layer=two"])


def test_flops_command_costs_a_preset_with_its_real_dimensions(capsys):
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "divprune", "--budget", "64",
                 "--new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens: 576 -> 64 entering the LLM" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in
            ("vision", "reduction", "total")}
    assert float(rows["vision"][1]) > 0.3  # CLIP-L/336 at its real width: ~0.38 TFLOPs
    assert float(rows["reduction"][1]) > 0 and float(rows["total"][1]) > float(rows["vision"][1])


def test_calibrate_command_writes_thresholds_dymu_loads(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(4):
        testing.random_image(32, 32, seed=seed).save(images / f"{seed}.png")
    out = tmp_path / "thresholds.json"
    assert main(["calibrate", "--model", "llava", "--images", str(images), "--target-removed", "4",
                 "--out", str(out)]) == 0
    from vtr.methods.dymu import DyMU

    assert len(DyMU(thresholds=str(out)).thresholds) >= 1
