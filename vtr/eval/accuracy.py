"""Accuracy of a (possibly wrapped) model on synthetic benchmark samples, in batches, in-process.

This is the fast path the demo and the tests use (lmms-eval's ``vtr_synthetic`` task scores the same
way through ``vtr sweep``): the answer is the first generated token, compared with the one-word answer.
Inputs are built once (``encode``) and reused for every method and budget; each batch also records
the visual tokens the wrapped model kept and the analytical FLOPs of the call (``vtr.measure.flops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import vtr
from vtr.eval import synthetic
from vtr.measure.flops import call_flops

NEW_TOKENS = 1  # every answer is one word, one token of the benchmark's word-level tokenizer


@dataclass(frozen=True)
class Score:
    """One configuration on a set of samples; counts and FLOPs are means per sample."""

    correct: tuple[bool, ...]
    visual_before: float
    visual_llm_input: float  # entering the LLM
    visual_last_layer: float  # seen by the last decoder layer (fewer for in-LLM methods)
    flops: float

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)


def encode(processor, items: list[synthetic.Sample], batch_size: int = 100) -> list[dict[str, torch.Tensor]]:
    """Processor inputs of ``items`` in left-padded batches (the prompt the benchmark asks with)."""
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        texts = [synthetic_prompt(processor, item.question) for item in chunk]
        batches.append(processor(images=[item.image() for item in chunk], text=texts, return_tensors="pt",
                                 padding=True, padding_side="left"))
    return batches


def synthetic_prompt(processor, question: str) -> str:
    """One image and the question, through the processor's chat template (as lmms-eval asks)."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


@torch.no_grad()
def score(model, processor, items: list[synthetic.Sample], batches: list[dict[str, torch.Tensor]]) -> Score:
    """Greedy answers of ``model`` (wrapped or not) to ``items``, whose inputs ``encode`` built."""
    answers, before, entering, last, flops = [], [], [], [], []
    for inputs in batches:
        inputs = inputs.to(model.device)
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answers += processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        flops += [b.total for b in call_flops(model, inputs, new_tokens=NEW_TOKENS)]
        if vtr.is_wrapped(model):
            for sample in vtr.stats(model).samples:
                before.append(sample.visual_before)
                entering.append(sample.visual_after)
                last.append(sample.visual_per_layer[-1] if sample.visual_per_layer else sample.visual_after)
        else:
            visual = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
            before, entering, last = before + visual, entering + visual, last + visual
    correct = tuple(answer.strip() == item.answer for answer, item in zip(answers, items))
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return Score(correct, mean(before), mean(entering), mean(last), mean(flops))
