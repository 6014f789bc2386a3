"""A sweep run's picture: the first reduced request drawn where the sweep said, once, on rank 0."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import vtr
from conftest import make_inputs
from vtr import testing
from vtr.eval.pictures import PICTURE_ENV, FirstSamplePicture


def test_the_first_request_is_drawn_once(tmp_path, monkeypatch):
    model, processor = testing.build("llava")
    inputs = make_inputs(processor, "llava")
    path = tmp_path / "pictures" / "divprune-8.png"
    monkeypatch.setenv(PICTURE_ENV, str(path))
    picture = FirstSamplePicture()
    with vtr.reduced(model, "divprune", 8), torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
        picture.draw(model, processor, dict(inputs), "red")
        drawn = np.asarray(Image.open(path))
        path.unlink()
        picture.draw(model, processor, dict(inputs), "red")  # later requests draw nothing
    assert drawn.shape[0] > 50 and not path.exists()
    monkeypatch.setenv("RANK", "1")
    assert FirstSamplePicture().path is None  # other ranks never draw


def test_a_picture_that_cannot_be_drawn_leaves_the_run_going(tmp_path, monkeypatch):
    model, processor = testing.build("llava")
    monkeypatch.setenv(PICTURE_ENV, str(tmp_path / "x.png"))
    picture = FirstSamplePicture()
    picture.draw(model, processor, dict(make_inputs(processor, "llava")), None)  # never reduced: no stats
    assert not (tmp_path / "x.png").exists() and picture.path is None
