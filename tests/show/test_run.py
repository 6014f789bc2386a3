"""``vtr.show`` and ``vtr.show_call``: the figure's cells are the painted pictures, refusals are notes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vtr
from conftest import make_inputs
from vtr import testing
from vtr.show.maps import pixel_maps
from vtr.show.run import picture


@pytest.fixture(scope="module")
def llava():
    return testing.build("llava")


def test_show_runs_methods_by_budgets_and_draws_each_cell(llava):
    model, processor = llava
    image = testing.random_image(32, 32, seed=2)
    figure = vtr.show(model, processor, image, methods=["divprune", "dymu"], budgets=[0.5, 8],
                      question="what is in the image ?", max_new_tokens=2)
    axes = figure.axes
    assert len(axes) == 3 * 2  # rows: none, divprune, dymu; columns: the budgets
    assert [axis.get_ylabel() for axis in axes[::2]] == ["none", "divprune", "dymu"]
    assert axes[0].get_title().startswith("unreduced: 64 → 64 tokens") and not axes[1].get_title()
    assert axes[2].get_title().startswith("budget 0.5: 64 → 32 tokens")
    assert axes[3].get_title().startswith("budget 8: 64 → 8 tokens")
    assert "dymu needs thresholds" in axes[4].texts[0].get_text().replace("\n", " ")  # refused: a note
    # the divprune cell is the painted picture of that call
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    with vtr.reduced(model, "divprune", 8), torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        expected = picture(processor, pixel_maps(model, inputs)[0], vtr.stats(model).samples[0], "", None).image
    assert np.array_equal(np.asarray(axes[3].images[0].get_array()), expected)
    assert np.array_equal(np.asarray(axes[0].images[0].get_array()), picture(
        processor, pixel_maps(model, inputs)[0], _unreduced(model, inputs), "", None).image)


def _unreduced(model, inputs):
    with vtr.reduced(model, "none"), torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        return vtr.stats(model).samples[0]


def test_show_call_draws_a_call_already_made_one_cell_per_sample(llava):
    model, processor = llava
    inputs = make_inputs(processor, "llava", texts=["what ?", "describe this picture please ?"], seeds=(0, 1))
    vtr.wrap(model, "divprune", 0.25)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        figure = vtr.show_call(model, processor, inputs, answers=["a", "b"])
        maps = pixel_maps(model, inputs)
        for axis, row_maps, sample, answer in zip(figure.axes, maps, vtr.stats(model).samples, "ab"):
            assert axis.get_title().endswith(f"“{answer}”")
            assert np.array_equal(np.asarray(axis.images[0].get_array()),
                                  picture(processor, row_maps, sample, "", None).image)
        with pytest.raises(ValueError, match="pass the inputs of the call"):
            vtr.show_call(model, processor, make_inputs(processor, "llava"))
    finally:
        vtr.unwrap(model)


def test_bad_arguments_are_clear_errors(llava):
    model, processor = llava
    with pytest.raises(ValueError, match="unknown methods"):
        vtr.show(model, processor, testing.random_image(), methods=["divprnue"])
    with pytest.raises(ValueError, match="expected a PIL image"):
        vtr.show(model, processor, 3, methods=["divprune"])
    with pytest.raises(FileNotFoundError, match="image file not found"):
        vtr.show(model, processor, "no/such/photo.jpg", methods=["divprune"])
