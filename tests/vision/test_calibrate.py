"""DyMU threshold calibration on the tiny LLaVA-1.5: thresholds that remove the target on average."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import vtr
from vtr import testing
from vtr.vision.calibrate import add_calibrate_arguments, calibrate, run_calibrate

TARGET = 8


def _removed_per_layer(model, processor, images, thresholds) -> list[float]:
    """Tokens DyMU removes after each merging layer, averaged over ``images``."""
    vtr.wrap(model, "dymu", thresholds=thresholds, vtu=False)
    prompts = [testing.prompt(processor, "what ?")] * len(images)
    with torch.no_grad():
        model(**processor(images=images, text=prompts, return_tensors="pt", padding=True))
    per_layer = torch.tensor([item.vision_per_layer for s in vtr.stats(model).samples for item in s.items]).float()
    vtr.unwrap(model)
    return (per_layer[:, :-1] - per_layer[:, 1:]).mean(0).tolist()


def test_one_batch_thresholds_remove_exactly_the_target_on_that_batch(tiny):
    """With one batch, DyMU's per-image thresholding reproduces the batch-level merge edge for edge."""
    model, processor = tiny("llava")
    images = [testing.random_image(32, 32, seed=s) for s in range(6)]
    thresholds = calibrate(model, images, TARGET, processor=processor, batch_size=6)
    assert len(thresholds) == 2 and all(0 < t < 1 for t in thresholds)
    assert _removed_per_layer(model, processor, images, thresholds) == [TARGET, TARGET]


def test_thresholds_averaged_over_batches_remove_about_the_target(tiny):
    model, processor = tiny("llava")
    images = [testing.random_image(32, 32, seed=s) for s in range(12)]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    thresholds = calibrate(model, pixels, TARGET, batch_size=4)  # pixel values work too
    removed = _removed_per_layer(model, processor, [testing.random_image(32, 32, seed=100 + s) for s in range(8)],
                                 thresholds)
    assert all(abs(r - TARGET) <= 2.5 for r in removed), removed


def test_calibrate_refuses_what_cannot_be_met(tiny):
    model, processor = tiny("llava")
    with pytest.raises(ValueError, match="more than layer 1 can merge"):
        calibrate(model, [testing.random_image()], 25, processor=processor)
    with pytest.raises(ValueError, match="processor="):
        calibrate(model, [testing.random_image()], 4)
    with pytest.raises(ValueError, match="target_removed must be an int"):
        calibrate(model, [testing.random_image()], 0, processor=processor)


def test_run_calibrate_writes_thresholds_dymu_reads(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        testing.random_image(32, 32, seed=seed).save(folder / f"{seed}.png")
    (folder / "notes.txt").write_text("not an image")
    parser = argparse.ArgumentParser()
    add_calibrate_arguments(parser)
    out = tmp_path / "thresholds.json"
    args = parser.parse_args(["--model", "llava", "--images", str(folder), "--target-removed", "4", "--out", str(out)])
    assert run_calibrate(args) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 3 and record["target_removed"] == 4 and len(record["thresholds"]) == 2
    assert "2 thresholds from 3 images" in capsys.readouterr().out
    assert vtr.methods.DyMU(thresholds=str(out)).values == tuple(record["thresholds"])
    with pytest.raises(ValueError, match="no images"):
        run_calibrate(parser.parse_args(["--model", "llava", "--images", str(tmp_path), "--target-removed", "4",
                                         "--out", str(out)]))


@pytest.mark.parametrize("name", ["llava_next", "llava_onevision"])
def test_calibrate_on_anyres_crops(tiny, name):
    """Every base image and crop is one calibration sequence; DyMU with the thresholds merges inside them."""
    model, processor = tiny(name)
    images = [testing.random_image(40, 32, seed=s) for s in range(3)]  # base + 2 crops each
    thresholds = calibrate(model, images, 2, processor=processor, batch_size=3)
    assert len(thresholds) == (2 if name == "llava_next" else 3) and all(0 < t < 1 for t in thresholds)
    vtr.wrap(model, "dymu", thresholds=thresholds, vtu=False)
    prompts = [testing.prompt(processor, "what ?")] * len(images)
    with torch.no_grad():
        model(**processor(images=images, text=prompts, return_tensors="pt", padding=True))
    assert all(item.content_after < item.content_before for s in vtr.stats(model).samples for item in s.items)
