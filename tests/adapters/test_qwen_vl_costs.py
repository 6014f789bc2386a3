"""Qwen3.5's decoder costs (``vtr.adapters.qwen_vl_costs``) against FlopCounterMode, exactly, on a tiny
text-only hybrid stack: GatedDeltaNet layers over a prompt of two chunks (the second padded) and their cached
decoding steps, and gated full attention."""

from __future__ import annotations

import torch
from conftest import counted_flops
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from vtr.adapters.qwen_vl_costs import QWEN3_5_MIXERS, GatedDeltaNet
from vtr.costs.decoder import Attention, decoder_from_config
from vtr.testing import QWEN3_5_LAYERS

PROMPT = 70  # two 64-token chunks of the delta rule, the second padded


def test_gated_delta_net_and_gated_attention_match_flop_counter():
    config = Qwen3_5TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, layer_types=QWEN3_5_LAYERS,
                               linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                               linear_num_value_heads=4, attn_implementation="eager")
    model = Qwen3_5ForCausalLM(config).eval()
    decoder = decoder_from_config(config, mixers=QWEN3_5_MIXERS)
    assert [type(layer.mixer) for layer in decoder.layers] == [GatedDeltaNet, Attention] * 2
    assert decoder.layers[1].mixer.gate
    assert decoder.scoring_attention(2, own_layer=False) is decoder.layers[1].mixer
    prompt = torch.randint(0, 64, (1, PROMPT), generator=torch.Generator().manual_seed(0))

    def generate(new_tokens: int) -> float:
        return counted_flops(model, lambda: model.generate(prompt, max_new_tokens=new_tokens,
                                                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0))

    prefill = generate(1)
    assert prefill == sum(decoder.layer_flops(i, PROMPT, PROMPT) for i in range(4)) + decoder.lm_head(1)
    assert generate(5) - prefill == decoder.decode_flops([PROMPT] * 4, 5)
