"""Presets copy real checkpoints: parameter counts and visual token counts match the published models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vtr.measure.presets import PRESETS, build_preset

# parameter counts of the published checkpoints (model cards / safetensors index)
PUBLISHED_PARAMS = {
    "llava-1.5-7b": 7_063_427_072,
    "llava-next-7b": 7_063_431_168,
    "llava-onevision-7b": 8_030_807_584,
    "qwen2.5-vl-7b": 8_292_166_656,
    "qwen3-vl-8b": 8_767_123_696,
    "internvl3.5-8b": 8_528_318_464,  # InternViT 304,012,288 + projector 33,570,816 + Qwen3-8B 8,190,735,360
    "gemma-3-4b": 4_300_079_472,
    "gemma-3-12b": 12_187_325_040,
    # Sources for the three Qwen MoE / hybrid rows: public notes found through the code index that quote the
    # Hugging Face safetensors metadata of the official repos (huggingface.co/Qwen/<id>); not read from the Hub here.
    # Qwen/Qwen3-VL-30B-A3B-Instruct: a model-inspection report of the downloaded checkpoint (its config.json
    # printed in full, 882 tensors in 13 shards summing to 31,070,754,032); no MTP head, transformers builds it all
    "qwen3-vl-30b-a3b": 31_070_754_032,
    # Qwen/Qwen3.5-27B (= Qwen/Qwen3.6-27B) safetensors metadata: 27,781,427,952 over 1,199 tensors, of which 15
    # ``mtp.*`` tensors (424,699,392) are the multi-token-prediction head that transformers' Qwen3_5 classes drop
    # on load (``_keys_to_ignore_on_load_unexpected = [r"^mtp.*"]``); transformers builds 27,356,728,560
    "qwen3.5-27b": 27_781_427_952,
    # Qwen/Qwen3.5-35B-A3B and Qwen/Qwen3.6-35B-A3B safetensors metadata (index total_size / 2, bf16): 35,951,822,704
    # over 1,811 tensors; transformers builds 35,107,181,936 (what a loaded Qwen3_5MoeForConditionalGeneration
    # reports), the rest (844,640,768) is the ``mtp.*`` head, whose decoder layer is a MoE one with 256 experts
    "qwen3.5-35b-a3b": 35_951_822_704,
    # google/gemma-4-E4B-it safetensors total (a single bf16 file of 15,992,595,884 bytes, quoted in several public
    # notes). The file also stores, for each of the 18 KV-sharing layers, the k/v projections and k norm that
    # transformers drops on load (``_keys_to_ignore_on_load_unexpected``) and one scalar per layer that it loads
    # into a buffer; the same rule gives gemma-4-E2B-it's published 5,123,178,051 from its config
    "gemma-4-e4b": 7_996_156_490,
}
# checkpoints that ship a multi-token-prediction head transformers does not build: its number of layers
MTP_LAYERS = {"qwen3.5-27b": 1, "qwen3.5-35b-a3b": 1}
# visual tokens of the preset's synthetic input, as the real processor + model produce them
VISUAL_TOKENS = {"llava-1.5-7b": 576, "llava-next-7b": 2928, "llava-onevision-7b": 4 * 196 + 1,
                 "qwen2.5-vl-7b": 256, "qwen3-vl-8b": 196, "qwen3-vl-30b-a3b": 196, "qwen3.5-27b": 196,
                 "qwen3.5-35b-a3b": 196,
                 "internvl3.5-8b": 5 * 256,  # 896x896: 2x2 crops + a thumbnail, 256 tokens each
                 "gemma-3-4b": 256, "gemma-3-12b": 256, "gemma-4-e4b": 280}


def _mtp_params(model, layers: int) -> int:
    """Qwen3.5's multi-token-prediction head as the checkpoint stores it: ``fc`` (2h -> h), two input norms and a
    final norm of width h, and ``layers`` decoder layers shaped like the model's full-attention ones."""
    text = model.config.get_text_config()
    full = text.layer_types.index("full_attention")
    layer = sum(p.numel() for p in model.model.language_model.layers[full].parameters())
    return 2 * text.hidden_size * text.hidden_size + 3 * text.hidden_size + layers * layer


def _stored_not_built(model) -> int:
    """Gemma 4's tensors that the checkpoint stores but transformers builds no parameter for: the k/v projections
    and k norm of every KV-sharing layer (it reads another layer's cache) and each layer's scalar (a buffer)."""
    if model.config.model_type != "gemma4":
        return 0
    text = model.config.get_text_config()
    stored = 0
    for layer in model.model.language_model.layers:
        attention = layer.self_attn
        if attention.is_kv_shared_layer:
            stored += 2 * text.hidden_size * attention.config.num_key_value_heads * attention.head_dim
            stored += attention.head_dim
        stored += layer.layer_scalar.numel()
    return stored


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_has_the_published_size_and_token_count(name):
    preset = PRESETS[name]
    config, processor = preset.build()
    with torch.device("meta"):  # no memory, no weights: only the shapes
        model = AutoModelForImageTextToText.from_config(config)
    built = sum(p.numel() for p in model.parameters())
    mtp = _mtp_params(model, MTP_LAYERS[name]) if name in MTP_LAYERS else 0
    assert built + mtp + _stored_not_built(model) == PUBLISHED_PARAMS[name]
    inputs = preset.inputs(processor, frames=4)
    placeholders = {config.image_token_id, getattr(config, "video_token_id", None)}
    assert int(sum((inputs["input_ids"] == t).sum() for t in placeholders if t is not None)) == VISUAL_TOKENS[name]


def test_truncated_preset_builds_on_the_device_and_runs():
    model, processor, preset = build_preset("llava-1.5-7b", "cpu", torch.bfloat16, layers=1, vision_layers=2)
    encoder_layers = [m for m in model.model.vision_tower.modules() if type(m).__name__ == "CLIPEncoderLayer"]
    assert len(model.model.language_model.layers) == 1 and len(encoder_layers) == 2
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = model(**preset.inputs(processor), logits_to_keep=1)
    assert torch.isfinite(out.logits).all()


def test_truncation_keeps_vision_indexes_valid():
    from vtr.measure.presets import _truncate

    config, _ = PRESETS["qwen3-vl-8b"].build()
    _truncate(config, layers=2, vision_layers=3)
    assert config.text_config.num_hidden_layers == 2
    assert config.vision_config.depth == 3 and config.vision_config.deepstack_visual_indexes == [2]


@pytest.mark.parametrize("layers, shared", [(30, 6), (8, 0)])
def test_truncation_drops_kv_sharing_layers_first(layers, shared):
    """Gemma 4 E4B's last 18 layers read earlier caches: the first ``layers`` layers keep the sharing ones among
    them, and the cut model still builds (every sharing layer has a source of its kind)."""
    from vtr.measure.presets import _truncate

    config, _ = PRESETS["gemma-4-e4b"].build()
    _truncate(config, layers=layers, vision_layers=None)
    assert config.text_config.num_kv_shared_layers == shared
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    sharing = [layer.self_attn.is_kv_shared_layer for layer in model.model.language_model.layers]
    assert sharing == [False] * (layers - shared) + [True] * shared


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'llava-13b'.*llava-1.5-7b"):
        build_preset("llava-13b")


@pytest.mark.parametrize("name", ["llava_next", "qwen2_5_vl", "qwen3_vl", "qwen3_5_moe", "internvl", "gemma3", "gemma4"])
def test_shape_proxy_gives_the_real_models_flops(tiny, name):
    """Token counts do not depend on widths: a weight-independent method on the proxy costs the same."""
    import vtr
    from conftest import make_inputs
    from vtr.measure.flops import call_flops
    from vtr.measure.presets import shape_proxy

    model, processor = tiny(name)
    proxy = AutoModelForImageTextToText.from_config(shape_proxy(model.config)).eval()
    inputs = make_inputs(processor, name)
    results = []
    for m in (model, proxy):
        vtr.wrap(m, ["random", "pdrop"], budget=0.5, layers=(1, 2))
        with torch.no_grad():
            m.generate(**inputs, max_new_tokens=1, do_sample=False)
        results.append(call_flops(m, inputs, new_tokens=4, config=model.config)[0])
    assert results[0] == results[1]


def test_cli_help_names_every_preset():
    """The CLI lists presets without importing torch; the list must follow the registry."""
    from vtr.commands.bench import PRESET_NAMES

    assert PRESET_NAMES == ", ".join(PRESETS)
