"""The decoder as data (``vtr.costs.decoder``) against FlopCounterMode on tiny text-only LLMs whose layers
the supported families do not have yet: a mixture of experts with a shared expert and dense layers, and
sliding-window attention whose decoding cache is capped at the window."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import counted_flops
from transformers import MistralConfig, MistralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from vtr.costs.decoder import Attention, DenseMLP, MixtureOfExperts, decoder_from_config

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            attn_implementation="eager")
PROMPT = 10


def _prompt() -> torch.Tensor:
    return torch.randint(0, 64, (1, PROMPT), generator=torch.Generator().manual_seed(0))


def test_mixture_of_experts_prefill_matches_flop_counter():
    """Router, two of four experts per token, the shared expert and its gate; layer 1 stays dense. The
    experts run eagerly: FlopCounterMode has no formula for ``torch._grouped_mm`` (the default kernel)."""
    config = Qwen2MoeConfig(**TEXT, num_hidden_layers=3, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                            shared_expert_intermediate_size=24, mlp_only_layers=[1], experts_implementation="eager")
    model = Qwen2MoeForCausalLM(config).eval()
    decoder = decoder_from_config(config)
    assert [type(layer.mlp) for layer in decoder.layers] == [MixtureOfExperts, DenseMLP, MixtureOfExperts]
    modelled = sum(decoder.layer_flops(i, PROMPT, PROMPT) for i in range(3)) + decoder.lm_head(PROMPT)
    assert counted_flops(model, lambda: model(_prompt())) == modelled


def test_sliding_window_decoding_matches_flop_counter():
    """A 4-token window: the prefill attends over all 10 tokens (sdpa's formula ignores the mask), every
    decoding step over the 4 keys the sliding cache keeps."""
    config = MistralConfig(**TEXT, num_hidden_layers=2, sliding_window=4)
    model = MistralForCausalLM(config).eval()
    decoder = decoder_from_config(config)
    assert all(layer.mixer.window == 4 for layer in decoder.layers)

    def generate(new_tokens: int) -> float:
        return counted_flops(model, lambda: model.generate(_prompt(), max_new_tokens=new_tokens,
                                                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0))

    prefill = generate(1)
    assert prefill == sum(decoder.layer_flops(i, PROMPT, PROMPT) for i in range(2)) + decoder.lm_head(1)
    assert generate(7) - prefill == decoder.decode_flops([PROMPT] * 2, 7)
    assert decoder.decode_flops([PROMPT] * 2, 7) < decoder_from_config(MistralConfig(**TEXT, num_hidden_layers=2)
                                                                       ).decode_flops([PROMPT] * 2, 7)


@dataclass(frozen=True)
class _Recurrent:
    """A stand-in for a linear-attention mixer a family would describe: constant cost per token."""

    width: int

    def flops(self, hidden: int, queries: float, keys: float) -> float:
        return 2.0 * queries * hidden * self.width

    def decode_flops(self, hidden: int, cached: int, steps: int) -> float:
        return steps * self.flops(hidden, 1, 0)


def test_layer_kinds_beyond_attention_come_from_the_family():
    config = MistralConfig(**TEXT, num_hidden_layers=2)
    config.layer_types = ["linear_attention", "full_attention"]
    with pytest.raises(ValueError, match=r"\['linear_attention'\]"):
        decoder_from_config(config)
    decoder = decoder_from_config(config, mixers={"linear_attention": lambda tc: _Recurrent(8)})
    assert decoder.layers[0].mixer == _Recurrent(8) and isinstance(decoder.layers[1].mixer, Attention)
    assert decoder.decode_flops([5, 5], 3) == pytest.approx(
        2 * _Recurrent(8).flops(32, 1, 0) + decoder.layers[1].mixer.decode_flops(32, 5, 2)
        + 2 * (2 * DenseMLP(48).flops(32, 1) + decoder.lm_head(1)))
    assert decoder.attention(1) is decoder.layers[1].mixer
    with pytest.raises(ValueError, match="no softmax attention"):
        decoder.attention(0)
