"""Scores recomputed from q/k under SDPA equal the eager attention weights of the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import vtr
from conftest import make_inputs
from vtr.methods import FastV
from vtr.methods.layer import LayerInput, LayerOutput

RECORDED: list[LayerInput] = []


@dataclass(frozen=True)
class RecordingFastV(FastV):
    """FastV that keeps everything and records what the engine handed it."""

    name: ClassVar[str] = "recording_fastv"

    def select(self, step: LayerInput) -> LayerOutput:
        RECORDED.append(step)
        return LayerOutput(step.group >= 0)


def _eager_rows(model, inputs, layer: int) -> torch.Tensor:
    """(B, Q, L) head-averaged eager attention probabilities of layer ``layer``."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    return attentions[layer].float().mean(1)


@pytest.mark.parametrize("name", ["llava", "llava_next", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("query", ["last", "text"])
def test_captured_scores_equal_eager_attention(tiny, name, query):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name, texts=["what ?", "describe this picture please , what is in it ?"],
                         seeds=(0, 1))
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    layer = 2
    RECORDED.clear()
    with vtr.reduced(model, RecordingFastV(budget=1.0, layer=layer, query=query)):
        with torch.no_grad():
            model(**inputs)
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # never switched to eager
    (step,) = RECORDED
    eager = _eager_rows(model, inputs, layer - 1)  # same columns: keep-all before the LLM keeps the layout
    mask = inputs["attention_mask"].bool()
    if query == "last":
        expected = eager[:, -1]
    else:  # mean over the attended text tokens of each row
        text = mask & (step.group < 0) & ~_visual_placeholders(model, inputs)
        expected = (eager * text.unsqueeze(-1)).sum(1) / text.sum(1, keepdim=True)
    assert torch.allclose(step.scores, expected, atol=1e-6)
    assert torch.allclose(step.scores.sum(1), torch.ones(2), atol=1e-5)
    assert bool((step.scores[~mask] == 0).all())  # padding gets no attention


def _visual_placeholders(model, inputs) -> torch.Tensor:
    return inputs["input_ids"] == model.config.image_token_id
