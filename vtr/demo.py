"""``vtr demo``: methods x budgets as a table a person can read.

By default on the shipped tiny LLaVA trained on the synthetic benchmark (``vtr.assets``): accuracy on
test samples, its retention relative to keeping every token, tokens kept and FLOPs. With a built-in
random tiny model (``vtr.testing.BUILDERS``) or a checkpoint directory (or a hub id where downloads are
possible, loaded with the Auto classes): the mechanics on one image (tokens, prefill time, the text).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

import vtr
from vtr import testing
from vtr.eval import accuracy, synthetic
from vtr.methods import takes_budget

from vtr.assets import NAME as TRAINED, tiny_llava_synth


@dataclass(frozen=True)
class DemoRow:
    method: str
    budget: str
    visual_in: int
    visual_out: int | None  # entering the LLM (None: the configuration did not run)
    visual_last_layer: int | None  # seen by the last decoder layer (differs for in-LLM methods)
    prompt_in: int
    prompt_out: int | None
    prefill_ms: float | None
    text: str


def load(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, processor)`` from ``TRAINED``, a tiny builder name (``vtr.testing.BUILDERS``) or a checkpoint
    path/id."""
    if model in testing.BUILDERS:
        loaded, processor = testing.build(model)
        return loaded.to(device=device, dtype=dtype), processor
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if model == TRAINED:
        model = str(tiny_llava_synth())

    loaded = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
    return loaded, AutoProcessor.from_pretrained(model)


def demo_inputs(model, processor, question: str = "what is in the image ?"):
    """A synthetic image and a chat-formatted question, sized for the model's processor."""
    is_qwen = model.config.model_type.startswith("qwen")
    image = testing.random_image(64, 48) if is_qwen else testing.random_image(32, 32)
    prompt = testing.prompt(processor, question)
    return processor(images=[image], text=[prompt], return_tensors="pt").to(model.device)


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_demo(model, processor, methods: list[str], budgets: list[int | float], max_new_tokens: int = 8,
             repeats: int = 3) -> list[DemoRow]:
    """One row per (method, budget), plus the unreduced model first (method ``none``)."""
    inputs = demo_inputs(model, processor)
    prompt_len = inputs["input_ids"].shape[1]
    rows = []

    n_visual = int((inputs["input_ids"][0] == model.config.image_token_id).sum())

    def not_run(method: str, budget: str, error: Exception) -> DemoRow:
        return DemoRow(method, budget, n_visual, None, None, prompt_len, None, None, f"not run: {error}")

    def measure(method: str, budget: str) -> DemoRow:
        try:
            with torch.no_grad():
                prefill = _median_ms(lambda: model(**inputs), repeats)
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        except vtr.ReductionError as error:  # e.g. inputs the method cannot reduce on this model: say so
            return not_run(method, budget, error)
        text = processor.tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)
        sample = vtr.stats(model).samples[0] if vtr.is_wrapped(model) else None
        visual_out = sample.visual_after if sample else n_visual
        last_layer = sample.visual_per_layer[-1] if sample and sample.visual_per_layer else visual_out
        return DemoRow(method, budget, n_visual, visual_out, last_layer, prompt_len,
                       sample.prompt_after if sample else prompt_len, prefill, text)

    rows.append(measure("none", "-"))
    for method in methods:
        for budget in budgets:
            if not takes_budget(method):  # e.g. dymu: its token count follows calibrated thresholds
                rows.append(DemoRow(method, str(budget), n_visual, None, None, prompt_len, None, None,
                                    f"not run: {method} takes no budget"))
                continue
            try:
                with vtr.reduced(model, method, budget=budget):
                    rows.append(measure(method, str(budget)))
            except vtr.ReductionError as error:  # refused at wrap: a budget the method cannot meet on this model
                rows.append(not_run(method, str(budget), error))
    return rows


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_table(rows: list[DemoRow]) -> str:
    header = ("method", "budget", "visual in", "visual out", "last layer", "prompt", "prefill ms", "generated text")
    body = [(r.method, r.budget, str(r.visual_in), _cell(r.visual_out), _cell(r.visual_last_layer),
             f"{r.prompt_in}->{_cell(r.prompt_out)}",
             "-" if r.prefill_ms is None else f"{r.prefill_ms:.1f}", r.text) for r in rows]
    return markdown_table(header, body)


@dataclass(frozen=True)
class AccuracyRow:
    """One configuration on the synthetic benchmark; ``score`` is None when it could not run (``note`` says why)."""

    method: str
    budget: str
    score: accuracy.Score | None
    note: str = ""


def run_accuracy_demo(model, processor, methods: list[str], budgets: list[int | float], samples: int,
                      batch_size: int = 100) -> list[AccuracyRow]:
    """The unreduced model first (method ``none``), then every method at every budget, on the first
    ``samples`` test samples of ``vtr.eval.synthetic``."""
    items = synthetic.samples("test", samples)
    batches = accuracy.encode(processor, items, batch_size)
    rows = [AccuracyRow("none", "-", accuracy.score(model, processor, items, batches))]
    for method in methods:
        for budget in budgets:
            if not takes_budget(method):  # e.g. dymu: its token count follows calibrated thresholds
                rows.append(AccuracyRow(method, str(budget), None, f"not run: {method} takes no budget"))
                continue
            try:
                with vtr.reduced(model, method, budget=budget):
                    rows.append(AccuracyRow(method, str(budget), accuracy.score(model, processor, items, batches)))
            except vtr.ReductionError as error:  # a budget the method cannot meet on this model: say so
                rows.append(AccuracyRow(method, str(budget), None, f"not run: {error}"))
    return rows


def format_accuracy_table(rows: list[AccuracyRow]) -> str:
    """Accuracy, retention (accuracy / keep-all accuracy), visual tokens and FLOPs per sample."""
    reference = rows[0].score
    header = ("method", "budget", "visual tokens (LLM in / last layer)", "accuracy", "retention", "MFLOPs / sample",
              "FLOPs vs none")
    body = []
    for row in rows:
        s = row.score
        if s is None:
            body.append((row.method, row.budget, "-", "-", "-", "-", row.note))
            continue
        body.append((row.method, row.budget, f"{s.visual_llm_input:.0f} / {s.visual_last_layer:.0f}",
                     f"{s.accuracy:.3f}", _ratio(s.accuracy, reference.accuracy), f"{s.flops / 1e6:.0f}",
                     f"{s.flops / reference.flops:.0%}"))
    return markdown_table(header, body)


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.0%}" if reference else "-"


def markdown_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
