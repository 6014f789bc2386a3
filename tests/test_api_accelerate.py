"""vtr on a model split by accelerate (what ``device_map="auto"`` does): every decoder layer and the vision
tower carry accelerate's hooks, weights offloaded to CPU and disk; wrapped generate equals the same
method on the plain model, and unwrap leaves accelerate's hooks exactly as they were."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import compute_module_sizes

import vtr
from conftest import greedy_without_placeholders, make_inputs

GREEDY = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
CASES = [  # a pre-LLM, an in-LLM and a vision-encoder method (vision-encoder merging runs on the LLaVA towers)
    ("llava", "divprune", dict(budget=6)),
    ("llava", "fastv", dict(budget=5, layer=2)),
    ("llava", "tome", dict(budget=0.5)),
    ("qwen2_5_vl", "divprune", dict(budget=6)),
    ("qwen2_5_vl", "fastv", dict(budget=5, layer=2)),
]


def _dispatch(model, offload_dir) -> dict:
    """Split ``model`` as ``device_map="auto"`` does on a machine with too little memory: half of it may stay
    on the CPU, the rest is offloaded to disk (weights loaded by accelerate's hooks at each forward)."""
    size = compute_module_sizes(model)[""]
    device_map = infer_auto_device_map(model, max_memory={"cpu": size // 2},
                                       no_split_module_classes=model._no_split_modules)
    assert {"cpu", "disk"} <= set(device_map.values())
    dispatch_model(model, device_map, offload_dir=str(offload_dir))
    return device_map


def _hooks(model) -> dict:
    """Every module's accelerate hook and the forward accelerate installed with it."""
    return {name: (module._hf_hook, module.__dict__["forward"]) for name, module in model.named_modules()
            if hasattr(module, "_hf_hook")}


def _vision_tower(model):
    return getattr(model.model, "vision_tower", None) or model.model.visual


def _assert_same(got, expected) -> None:
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,method,options", CASES)
def test_wrapped_dispatched_model_equals_the_method_on_the_plain_model(tiny, tmp_path, name, method, options):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    greedy = greedy_without_placeholders(model, **GREEDY)
    with vtr.reduced(model, method, **options):
        expected = model.generate(**inputs, **greedy)
    _dispatch(model, tmp_path)
    hooks = _hooks(model)
    assert all(name_ in hooks for name_ in [n for n, m in model.named_modules()
                                            if m is _vision_tower(model) or m in model.model.language_model.layers])
    plain = model.generate(**inputs, **greedy)

    vtr.wrap(model, method, **options)
    _assert_same(model.generate(**inputs, **greedy), expected)
    sample = vtr.stats(model).samples[0]
    assert (sample.visual_per_layer or (sample.visual_after,))[-1] < sample.visual_before  # it did reduce

    vtr.unwrap(model)
    after = _hooks(model)
    assert after.keys() == hooks.keys()
    assert all(after[n][0] is hooks[n][0] and after[n][1] is hooks[n][1] for n in hooks)
    _assert_same(model.generate(**inputs, **greedy), plain)
