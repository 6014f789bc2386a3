"""`vtr demo`: the accuracy table on the shipped model (DyMU at its shipped thresholds included), the
mechanics table on every built-in model with the default method list, refusals as rows, rows printed as
they finish."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import vtr
from vtr import testing
from vtr.assets import shipped_dymu_levels
from vtr.cli import main
from vtr.eval import synthetic


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]


def test_default_demo_scores_the_trained_model_on_the_synthetic_benchmark(capsys):
    assert main(["demo", "--samples", "10", "--methods", "random,fastv,tome,dymu", "--budgets", "0.5,0.11",
                 "--picture", "none"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[:4] == ["method", "budget", "visual tokens (LLM in / last layer)", "accuracy"]
    by_key = {(r[0], r[1]): r for r in rows}
    shipped = [f"r={level}" for level in shipped_dymu_levels()]
    assert shipped == ["r=8", "r=16", "r=32"]
    budgeted = [[m, b] for m in ("random", "fastv", "tome") for b in ("0.5", "0.11")]
    assert [r[:2] for r in rows] == [["none", "-"], *budgeted, *(["dymu", level] for level in shipped)]
    assert by_key[("none", "-")][2] == "196 / 196" and by_key[("none", "-")][4] == "100%"
    assert by_key[("random", "0.5")][2] == "98 / 98" and by_key[("random", "0.11")][2] == "22 / 22"
    assert by_key[("fastv", "0.11")][2] == "196 / 22"  # in-LLM: all enter the LLM, 22 reach the last layer
    for method, budget in [("random", "0.5"), ("random", "0.11"), ("fastv", "0.5")]:
        accuracy = float(by_key[(method, budget)][3])
        assert 0 <= accuracy <= 1 and int(by_key[(method, budget)][6].rstrip("%")) < 100  # cheaper than none
    # DyMU's count follows the image: the more merged per layer, the fewer tokens, each level near its
    # calibration target (196 - 4 layers x level) on test scenes it was not calibrated on
    dymu_tokens = [float(by_key[("dymu", level)][2].split(" / ")[0]) for level in shipped]
    assert dymu_tokens == sorted(dymu_tokens, reverse=True)
    for level, tokens in zip((8, 16, 32), dymu_tokens):
        assert abs(tokens - (196 - 4 * level)) <= 16, (level, tokens)


def test_the_default_demo_has_a_row_per_method_on_the_shipped_model(capsys):
    """`vtr demo --samples 2`: the default model, methods and budgets, DyMU at its shipped levels."""
    assert main(["demo", "--samples", "2", "--picture", "none"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert {r[0] for r in rows} == set(vtr.available_methods())
    assert len(rows) == 1 + 3 * (len(vtr.available_methods()) - 1)  # none, then 3 budgets or 3 DyMU levels each
    assert [r[1] for r in rows if r[0] == "dymu"] == ["r=8", "r=16", "r=32"]


def test_the_demo_pictures_what_each_method_kept_of_synthetic_scenes(capsys, tmp_path, monkeypatch):
    """The picture (written by default, next to where the demo runs): three synthetic test scenes, the
    objects of each drawn, at the last budget."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--samples", "1", "--methods", "divprune,fastv", "--budgets", "0.11"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("picture: demo_kept.png")
    picture = np.asarray(Image.open(tmp_path / "demo_kept.png").convert("RGB"))
    assert picture.shape[1] > picture.shape[0] / 2  # three columns (scenes) of three rows (none + 2 methods)
    pixels = picture.reshape(-1, 3).astype(int)
    for scene in synthetic.samples("test", 3):  # every object colour of the scenes is drawn
        for shape in scene.scene.objects:
            assert (np.abs(pixels - synthetic.COLORS[shape.color]).max(1) <= 2).sum() > 50, shape


# internvl_qwen3: internvl's tower; the Qwen3.5 / MoE types: the Qwen ViT as qwen3_vl, their methods tested in
# tests/adapters/test_qwen_vl.py (every method on qwen3_5 here costs ~40 s)
@pytest.mark.parametrize("name", [n for n in testing.BUILDERS if n not in ("internvl_qwen3", "qwen3_5", "qwen3_5_moe",
                                                                             "qwen3_vl_moe")])
def test_mechanics_table_has_a_row_per_method_on_every_built_in_model(capsys, name):
    """The default method list on every built-in model: exit 0, a row per method and level, and methods
    the model refuses (ToMe/DyMU on the Qwen ViT, InternViT and Gemma 3's pooled SigLIP, at wrap) are 'not run'
    rows with the reason."""
    assert main(["demo", "--model", name, "--budgets", "0.25", "--max-new-tokens", "2", "--repeats", "1",
                 "--picture", "none"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[0] == "method" and rows[0][:2] == ["none", "-"]
    assert {r[0] for r in rows} == set(vtr.available_methods())
    labels = {r[1] for r in rows if r[0] == "dymu"}
    assert labels == {"r=4", "r=8", "r=16"}
    refused = {r[0] for r in rows if r[-1].startswith("not run:")}
    if name.startswith(("qwen", "internvl", "gemma")):
        assert {"tome", "dymu"} <= refused
        reason = {"qwen": "CLIP/SigLIP", "inte": "pixel shuffle", "gemm": "average-pools"}[name[:4]]
        assert all(reason in r[-1] for r in rows if r[0] in ("tome", "dymu"))
    else:
        assert "tome" not in refused  # a budget tome meets on every CLIP/SigLIP tower
        kept = [int(r[3]) for r in rows if r[0] == "dymu" and not r[-1].startswith("not run:")]
        assert kept and all(k < int(rows[0][3]) for k in kept)  # calibrated on the fly, dymu reduces


def test_rows_are_printed_as_they_finish(capsys, monkeypatch):
    """When the k-th configuration is wrapped, the rows of all earlier ones are already on stdout."""
    printed_before_wrap = []
    wrap = vtr.wrap

    def spy(*args, **kwargs):
        printed_before_wrap.append(len(table_rows(capsys.readouterr().out)))
        return wrap(*args, **kwargs)

    monkeypatch.setattr(vtr, "wrap", spy)
    assert main(["demo", "--model", "llava", "--methods", "random,divprune", "--budgets", "0.5,8",
                 "--max-new-tokens", "1", "--repeats", "1", "--picture", "none"]) == 0
    # header + none (+ each earlier config) printed before each wrap; readouterr consumed what was shown
    assert printed_before_wrap == [2, 1, 1, 1]


def test_a_budget_the_method_cannot_meet_is_a_row_not_a_crash(capsys):
    assert main(["demo", "--model", "llava", "--methods", "pdrop,divprune", "--budgets", "8", "--max-new-tokens",
                 "1", "--repeats", "1", "--picture", "none"]) == 0
    by_method = {r[0]: r for r in table_rows(capsys.readouterr().out)[1:]}
    assert by_method["pdrop"][-1].startswith("not run: pdrop cannot average 8")
    assert by_method["divprune"][3] == "8"


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_demo_on_a_checkpoint_saved_with_save_pretrained(tmp_path, capsys, name):
    model, processor = testing.build(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert main(["demo", "--model", str(tmp_path), "--methods", "divprune", "--budgets", "4",
                 "--max-new-tokens", "2", "--repeats", "1", "--picture", "none"]) == 0
    rows = [r for r in table_rows(capsys.readouterr().out) if r[0] == "divprune"]
    assert rows[0][:4] == ["divprune", "4", "48" if "qwen" in name else "64", "4"]


def test_bad_budget_and_unknown_method_are_one_line_errors(capsys):
    assert main(["demo", "--methods", "random", "--budgets", "1.5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vtr demo: error: --budgets 1.5:") and "fraction" in error and "Traceback" not in error
    assert main(["demo", "--model", "llava", "--methods", "divprnue"]) == 2
    assert "unknown ['divprnue']; available: " in capsys.readouterr().err
