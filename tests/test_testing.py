"""The tiny builders work for all seven architectures (they back the tests and the demo)."""

from __future__ import annotations

import pytest
import torch

from vtr import testing


@pytest.mark.parametrize("name", list(testing.BUILDERS))
def test_builder_runs_image_forward_and_generate(name):
    model, processor = testing.build(name)
    image = testing.random_image(64, 48) if name.startswith("qwen") else testing.random_image(40, 32)
    inputs = processor(images=[image], text=[testing.prompt(processor)], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) > 0
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_builders_are_seeded():
    a, _ = testing.build("llava", seed=1)
    b, _ = testing.build("llava", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_builder():
    with pytest.raises(ValueError, match="no tiny builder"):
        testing.build("gpt2")
