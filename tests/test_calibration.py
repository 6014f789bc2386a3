"""DyMU threshold calibration (vtr.calibration over vtr.vision.calibrate) on the tiny LLaVA-1.5: thresholds
that remove the target on average."""

from __future__ import annotations

import pytest
import torch

import vtr
from vtr import testing
from vtr.calibration import calibrate

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
