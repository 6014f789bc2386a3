"""`vtr calibrate`: a folder of images -> a thresholds file DyMU reads; bad folders are one-line errors."""

from __future__ import annotations

import json

import vtr
from vtr import testing
from vtr.cli import main


def test_calibrate_writes_thresholds_dymu_reads(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        testing.random_image(32, 32, seed=seed).save(folder / f"{seed}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "thresholds.json"
    assert main(["calibrate", "--model", "llava", "--images", str(folder), "--target-removed", "4", "--out",
                 str(out), "--batch-size", "2"]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 3 and record["target_removed"] == 4 and len(record["thresholds"]) == 2
    captured = capsys.readouterr()
    assert "2 thresholds from 3 images" in captured.out
    assert [line.split(" (")[0] for line in captured.err.splitlines() if line.startswith("[")] == [
        "[1/2] calibrating on images 1-2 of 3", "[2/2] calibrating on images 3-3 of 3"]
    assert vtr.methods.DyMU(thresholds=str(out)).values == tuple(record["thresholds"])


def test_a_folder_without_images_is_a_one_line_error(tmp_path, capsys):
    args = ["--model", "llava", "--target-removed", "4", "--out", str(tmp_path / "t.json")]
    assert main(["calibrate", "--images", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err.startswith("vtr calibrate: error: no images (.jpg")
    assert main(["calibrate", "--images", str(tmp_path / "missing"), *args]) == 2
    assert "--images must be a folder of images" in capsys.readouterr().err
