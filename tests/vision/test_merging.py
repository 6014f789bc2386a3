"""Merging inside the CLIP tower: proportional attention, exact no-op, hooks that always come off."""

from __future__ import annotations

import math

import pytest
import torch

import vtr
from conftest import GREEDY, make_inputs
from vtr.adapters import adapter_for
from vtr.methods import DyMU, ToMe
from vtr.vision.merging import EncoderMerging, MergeTarget

NO_MERGE = {
    "tome_r0": dict(method="tome", r=0),
    "tome_keep_all": dict(method="tome", budget=1.0),
    "dymu_inf_vtu": dict(method="dymu", thresholds=[math.inf] * 3),
    "dymu_inf_no_vtu": dict(method="dymu", thresholds=[math.inf] * 3, vtu=False),
}


def _manual_eager_layer(layer, hidden: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer written out, with ``log(size)`` added to every key column before the softmax."""
    attention = layer.self_attn
    batch, n, width = hidden.shape
    x = layer.layer_norm1(hidden)
    q, k, v = (proj(x).view(batch, n, -1, attention.head_dim).transpose(1, 2)
               for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    logits = q @ k.transpose(-1, -2) * attention.scale + size.log()[:, None, None, :]
    out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, n, width)
    hidden = hidden + attention.out_proj(out)
    return hidden + layer.mlp(layer.layer_norm2(hidden))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_later_layers_get_proportional_attention(tiny, attention):
    model, processor = tiny("llava")
    model.set_attn_implementation(attention)
    adapter = adapter_for(model)
    inputs = make_inputs(processor, "llava", seeds=(0, 1))
    seen = {}
    layer = model.model.vision_tower.encoder.layers[1]
    hook = layer.register_forward_hook(lambda module, args, output: seen.update(input=args[0], output=output))
    merging = EncoderMerging(adapter.merge_target(), DyMU(thresholds=[0.3, math.inf]).matcher)  # merges after layer 0
    with torch.no_grad(), merging.installed():
        adapter.encode("image", inputs)
    hook.remove()
    size = merging.state.size
    assert (size > 1).any() and seen["input"].shape[1] == size.shape[1] < 65
    with torch.no_grad():
        expected = _manual_eager_layer(layer, seen["input"], size)
    valid = size > 0
    torch.testing.assert_close(seen["output"][valid], expected[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llava", "llava_next", "llava_onevision"])  # CLIP; AnyRes CLIP and SigLIP
@pytest.mark.parametrize("config", list(NO_MERGE))
def test_nothing_merged_is_bit_identical_to_the_unwrapped_model(tiny, name, config):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, texts=["what ?", "describe this picture please , what is in it ?"],
                         seeds=(0, 1))
    expected = model.generate(**inputs, **GREEDY)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    vtr.wrap(model, **NO_MERGE[config])
    got = model.generate(**inputs, **GREEDY)
    with torch.no_grad():
        got_logits = model(**inputs).logits
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    real = inputs["attention_mask"].bool()
    assert torch.equal(got_logits[real], expected_logits[real])
    tokens = 65 if name == "llava" else 16 + model.config.vision_config.model_type.startswith("clip")
    assert [item.vision_per_layer for s in vtr.stats(model).samples for item in s.items] == [(tokens,) * 3] * 2


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_hooks_come_off_after_the_call_and_on_error(tiny, monkeypatch):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    model(**inputs)  # let transformers install its own output recorders first
    tower, decoder = model.model.vision_tower, model.model.language_model
    before = _hook_count(tower), _hook_count(decoder)
    vtr.wrap(model, "tome", budget=20)
    model(**inputs)
    assert _hook_count(tower) == before[0]
    with pytest.raises(vtr.ReductionError, match="tome cannot bring 64 patch tokens down to 4"):
        vtr.wrap(model, "tome", budget=4)  # unreachable for this 3-layer tower: refused at wrap
    assert _hook_count(tower) == before[0]

    def failing(self, geometry):
        raise vtr.ReductionError("matcher failed inside the encoder")

    with monkeypatch.context() as patched:  # an error inside the encoder, under the merging hooks
        patched.setattr(ToMe, "matcher", failing)
        with pytest.raises(vtr.ReductionError, match="matcher failed inside the encoder"):
            model(**inputs)
    assert _hook_count(tower) == before[0]
    vtr.wrap(model, "dymu", thresholds=[0.6, 0.6])  # virtual unmerging hooks the decoder while wrapped
    model(**inputs)
    assert _hook_count(decoder) > before[1]
    vtr.unwrap(model)
    assert (_hook_count(tower), _hook_count(decoder)) == before


def test_merge_geometry_reaches_the_method(tiny):
    model, _ = tiny("llava")
    seen = []

    def matcher(geometry):
        seen.append(geometry)
        return ToMe(r=0).matcher(geometry)

    adapter = adapter_for(model)
    with torch.no_grad(), EncoderMerging(adapter.merge_target(), matcher).installed():
        adapter.encode("image", {"pixel_values": torch.zeros(1, 3, 32, 32)})
    (geometry,) = seen
    assert (geometry.tokens, geometry.features, geometry.merge_layers, geometry.depth) == (65, 64, 2, 3)


@pytest.mark.parametrize("name,kind", [("llava", "image"), ("llava_next", "image"), ("llava_onevision", "image"),
                                       ("llava_onevision", "video"), ("llava_next_video", "video")])
def test_full_size_geometry_is_what_every_encoder_call_sees(tiny, name, kind):
    """wrap checks a vision method's plan against ``full_size_geometry``: it must be the geometry of real calls
    (AnyRes crops and video frames included), CLIP (class token) and SigLIP (none) alike."""
    model, processor = tiny(name)
    seen = []

    def matcher(geometry):
        seen.append(geometry)
        return ToMe(r=0).matcher(geometry)

    target = adapter_for(model).merge_target()
    with torch.no_grad(), EncoderMerging(target, matcher).installed():
        model(**make_inputs(processor, name, kind))
    assert seen and all(geometry == target.full_size_geometry() for geometry in seen)


def test_dymu_on_an_odd_siglip_sequence_merges_what_the_reference_caps():
    """A SigLIP tower (no class token) on a 3 x 3 patch grid, every A token above DyMU's threshold: the
    reference merges min(A tokens passing, (t - protected) // 2) per layer, so 9 -> 5 -> 3 -> 2 tokens
    (uncapped, all ceil(t / 2) A tokens would go: 9 -> 4 -> 2 -> 1)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                 num_attention_heads=2, image_size=24, patch_size=8)).eval()
    layers = tower.encoder.layers
    target = MergeTarget(layers=layers, merge_layers=3, dropped=0, protected=0)
    merging = EncoderMerging(target, DyMU(thresholds=[-2.0] * 3).matcher)
    with torch.no_grad(), merging.installed():
        tower(pixel_values=torch.randn(1, 3, 24, 24))
    expected, t = [9], 9
    for _ in range(2):  # the reference rule, layer by layer (every one of the ceil(t / 2) A tokens passes)
        t -= min((t + 1) // 2, t // 2)
        expected.append(t)
    assert list(merging.per_layer_counts()[0]) == expected == [9, 5, 3]
    assert merging.feature_counts() == [2]  # the third layer's merge: 3 -> 2
