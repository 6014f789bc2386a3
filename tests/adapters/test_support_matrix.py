"""The README's support matrix is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from vtr.adapters import support_matrix, support_matrix_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_matrix_matches_the_code():
    text = README.read_text()
    block = text.split("<!-- support-matrix:start -->")[1].split("<!-- support-matrix:end -->")[0].strip()
    assert block == support_matrix_markdown()


def test_every_family_takes_images_and_the_video_models_take_video():
    rows = {r["model_type"]: r for r in support_matrix()}
    assert set(rows) == {"llava", "llava_next", "llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl",
                         "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "internvl", "gemma3", "gemma4"}
    assert all(r["image"] == r["multi-image"] == "yes" for r in rows.values())
    assert {t for t, r in rows.items() if r["video"] == "yes"} == {
        "llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5",
        "qwen3_5_moe", "gemma4"}
    assert rows["internvl"]["video"] == "frames"  # each frame an image item of its own
