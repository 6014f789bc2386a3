"""The exactness invariants on a CUDA device (run by ``scripts/gpu_check.sh``; CI has no GPU).

On CPU every invariant is tested across the suite; these re-run the central ones where kernels, attention
implementations and launch order differ: keep-all equals the unwrapped model, cached generate equals an
uncached recompute, for a pre-LLM and an in-LLM method.
"""

from __future__ import annotations

import pytest
import torch

import vtr
from vtr import testing

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FAMILIES = ["llava", "qwen2_5_vl"]


def _on_cuda(name: str):
    model, processor = testing.build(name)
    model = model.to("cuda")
    inputs = processor(images=[testing.random_image()], text=[testing.prompt(processor)], return_tensors="pt")
    return model, inputs.to("cuda")


def _greedy(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
def test_keep_all_is_bit_identical_on_cuda(name):
    model, inputs = _on_cuda(name)
    with torch.no_grad():
        plain_logits = model(**inputs).logits
    plain = _greedy(model, inputs)
    with vtr.reduced(model, "random", budget=1.0):
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, plain_logits)
        assert torch.equal(_greedy(model, inputs), plain)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["divprune", "fastv"])
def test_cached_generate_equals_uncached_on_cuda(name, method):
    model, inputs = _on_cuda(name)
    with vtr.reduced(model, method, budget=0.25):
        assert torch.equal(_greedy(model, inputs), _greedy(model, inputs, use_cache=False))
