"""Virtual token unmerging equals the reference's full-length formulation, under SDPA and eager."""

from __future__ import annotations

import pytest
import torch

import vtr
from conftest import make_inputs
from vtr.engine import reduce_inputs
from vtr.methods import DyMU


def _group_mean_broadcast(values: torch.Tensor, representative: torch.Tensor) -> torch.Tensor:
    """Every column replaced by the mean over the columns sharing its representative (a loop, on purpose)."""
    out = values.clone()
    for row in range(values.shape[0]):
        for rep in representative[row].unique():
            members = representative[row] == rep
            out[row, members] = values[row, members].mean(0)
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_vtu_equals_full_length_attention_with_group_mean(tiny, attention):
    """The reference's "submission version": the LLM at full length, every self-attention output averaged
    over each merged token's copies (O = M (M^T M)^-1 M^T O)."""
    model, processor = tiny("llava")
    model.set_attn_implementation(attention)
    inputs = make_inputs(processor, "llava", texts=["what ?", "describe this picture please , what is in it ?"],
                         seeds=(0, 1))
    method = DyMU(thresholds=[0.6, 0.6])
    vtr.wrap(model, method)
    with torch.no_grad():
        got = model(**inputs).logits
    state = model._vtr_state
    call = reduce_inputs(state.adapter, state.pipeline.pre_llm, "original", dict(inputs), False, method)
    representative = call.token_representative
    assert (representative != torch.arange(representative.shape[1])).sum() > 20, "the test needs merged tokens"
    vtr.unwrap(model)
    handles = [layer.self_attn.register_forward_hook(
        lambda module, args, output: (_group_mean_broadcast(output[0], representative), *output[1:]))
        for layer in model.model.language_model.layers]
    with torch.no_grad():
        expected = model(**call.kwargs).logits
    for handle in handles:
        handle.remove()
    valid = call.kwargs["attention_mask"].bool()
    assert got.shape == expected.shape == (*inputs["input_ids"].shape, got.shape[-1])
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_vtu_stats_count_the_merged_prompt(tiny):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    vtr.wrap(model, "dymu", thresholds=[0.6, 0.6])
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    sample = vtr.stats(model).samples[0]
    assert sample.prompt_before - sample.prompt_after == 64 - sample.visual_after > 0
    assert torch.equal(out[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
