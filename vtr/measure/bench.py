"""``vtr bench``: what a reduction method costs and saves in wall time, measured the same way for all.

For each (method, budget) on one input, with warm-up and repeats (median and quartiles):

- ``ttft_ms``: ``generate(max_new_tokens=1)`` from inputs on the device to the first token, synchronised;
- ``prefill_ms``: one ``forward`` of the prompt (vision encoder, reduction, LLM; last-position logits);
- ``reduction_ms``: time inside vtr's own code during the TTFT call (the pre-LLM engine minus the model's
  vision encoder, plus the in-LLM hooks), recorded with device synchronisation at its boundaries;
- ``decode_tok_s``: tokens per second after the first one, from a longer ``generate`` timed between its
  first and last generated token;
- ``peak_mem_mb``: peak allocated device memory during that generate (CUDA only);
- ``tflops``: analytical FLOPs of the TTFT call (``vtr.measure.flops``) when available.

Each budget also gets an **ideal** row: the unwrapped model fed directly with the reduced inputs (the
model's own encoder runs, then generate on the already reduced prompt), i.e. the same token count with
no reduction code. ``ttft / ideal`` is a method's overhead over a perfect implementation of its budget.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

import vtr
from vtr.adapters import adapter_for
from vtr.engine import reduce_inputs
from vtr.measure.timing import device_sync, recording
from vtr.methods import RandomSelect


@dataclass(frozen=True)
class Timing:
    """Median and quartiles of repeated measurements, in milliseconds."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, values: list[float]) -> "Timing":
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3)


@dataclass(frozen=True)
class BenchRow:
    method: str  # "none" = unreduced, "ideal" = reduced inputs without vtr
    budget: str
    visual_in: int
    visual_llm: int  # entering the LLM
    visual_last_layer: int  # seen by the last decoder layer
    ttft_ms: Timing
    prefill_ms: Timing
    reduction_ms: Timing | None
    decode_tok_s: float
    peak_mem_mb: float | None
    tflops: float | None
    ttft_over_ideal: float | None = None


@dataclass(frozen=True)
class BenchConfig:
    warmup: int = 1
    repeats: int = 5
    new_tokens: int = 16


def _timed(fn: Callable[[], Any], sync: Callable[[], None], config: BenchConfig) -> list[float]:
    for _ in range(config.warmup):
        fn()
    times = []
    for _ in range(config.repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _greedy(new_tokens: int) -> dict:
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


class _StepClock:
    """A stopping criterion that never stops: it timestamps every generated token (synchronised), so the
    decode rate comes from the steps themselves rather than from two noisy end-to-end timings."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _decode_rate(model, inputs: dict, sync, config: BenchConfig) -> tuple[float, float | None]:
    """Tokens/s after the first token (median over repeats of the time from the first to the last
    generated token), and peak device memory (MB) of that generate."""
    from transformers import StoppingCriteriaList

    on_cuda = torch.device(model.device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    rates = []
    for _ in range(max(1, config.repeats // 2) if config.new_tokens > 1 else 0):  # one token: no decoding
        clock = _StepClock(sync)
        model.generate(**inputs, **_greedy(config.new_tokens), stopping_criteria=StoppingCriteriaList([clock]))
        rates.append((len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
    peak = torch.cuda.max_memory_allocated(model.device) / 2**20 if on_cuda else None
    return statistics.median(rates) if rates else float("nan"), peak


def _tflops(model, inputs: dict) -> float | None:
    try:
        from vtr.measure.flops import call_flops
    except ImportError:
        return None
    return sum(b.total for b in call_flops(model, inputs, new_tokens=1)) / 1e12


def _visual_counts(model, inputs: dict) -> tuple[int, int, int]:
    if not vtr.is_wrapped(model):
        n = _placeholders(model, inputs)
        return n, n, n
    sample = vtr.stats(model).samples[0]
    last = sample.visual_per_layer[-1] if sample.visual_per_layer else sample.visual_after
    return sample.visual_before, sample.visual_after, last


def _placeholders(model, inputs: dict) -> int:
    ids = inputs["input_ids"][0]
    tokens = {getattr(model.config, f"{m}_token_id", None) for m in ("image", "video")} - {None}
    return int(sum(int((ids == t).sum()) for t in tokens))


def measure(model, inputs: dict, method: str, budget: str, config: BenchConfig) -> BenchRow:
    """One row for the model as it is now (wrapped or not)."""
    sync = device_sync(model.device)
    overheads: list[float] = []

    def first_token() -> None:
        with recording(sync) as recorder:
            model.generate(**inputs, **_greedy(1))
        overheads.append(recorder.vtr_ms)

    with torch.no_grad():
        ttft = _timed(first_token, sync, config)
        overheads = overheads[config.warmup:]
        prefill = _timed(lambda: model(**inputs, logits_to_keep=1), sync, config)
        visual = _visual_counts(model, inputs)
        rate, peak = _decode_rate(model, inputs, sync, config)
        flops = _tflops(model, inputs)
    reduction = Timing.of(overheads) if vtr.is_wrapped(model) else None
    return BenchRow(method, budget, *visual, Timing.of(ttft), Timing.of(prefill), reduction, rate, peak, flops)


def encoder_times(model, inputs: dict, config: BenchConfig) -> list[float]:
    """Milliseconds of the model's own vision encoder on every visual input of ``inputs``, per repeat (what a
    reduction's time compares with, and what the ideal row adds to its precomputed-feature timings)."""
    adapter = adapter_for(model)
    modalities = adapter.present_modalities(inputs)
    with torch.no_grad():
        return _timed(lambda: [adapter.encode(m, inputs) for m in modalities], device_sync(model.device), config)


def measure_ideal(model, inputs: dict, budget: int | float, config: BenchConfig) -> BenchRow:
    """The unwrapped model on inputs already reduced to ``budget`` tokens: the encoder's time plus the
    time of generate/forward on the reduced prompt (whose features arrive precomputed)."""
    sync = device_sync(model.device)
    adapter = adapter_for(model)
    with torch.no_grad():
        reduced = reduce_inputs(adapter, RandomSelect(budget=budget), "original", dict(inputs), for_generate=True)
        encode = statistics.median(encoder_times(model, inputs, config))
        kwargs = reduced.kwargs
        ttft = _timed(lambda: model.generate(**kwargs, **_greedy(1)), sync, config)
        prefill = _timed(lambda: model(**kwargs, logits_to_keep=1), sync, config)
        rate, peak = _decode_rate(model, kwargs, sync, config)
    kept = reduced.stats.samples[0]
    shift = lambda values: [v + encode for v in values]  # noqa: E731
    return BenchRow("ideal", str(budget), kept.visual_before, kept.visual_after, kept.visual_after,
                    Timing.of(shift(ttft)), Timing.of(shift(prefill)), None, rate, peak, None)


def run_bench(model, inputs: dict, methods: list[str], budgets: list[int | float], config: BenchConfig,
              progress: Callable[[str], None] = lambda label: None, **options: Any) -> list[BenchRow]:
    """Rows: unreduced, then per budget the ideal row and every method (``options`` go to the methods;
    ``"a+b"`` composes stages, e.g. ``holitom+holitom_inner``). ``progress(label)`` is called as each of the ``1 + len(budgets) * (1 + len(methods))`` rows starts."""
    if vtr.is_wrapped(model):
        raise ValueError("run_bench wraps the model itself; pass an unwrapped model")
    progress("none")
    rows = [measure(model, inputs, "none", "-", config)]
    for budget in budgets:
        progress(f"ideal at budget {budget}")
        ideal = measure_ideal(model, inputs, budget, config)
        rows.append(ideal)
        for method in methods:
            progress(f"{method} at budget {budget}")
            with vtr.reduced(model, method.split("+"), budget=budget, **options):
                row = measure(model, inputs, method, str(budget), config)
            rows.append(dataclasses.replace(row, ttft_over_ideal=row.ttft_ms.median / ideal.ttft_ms.median))
    return rows


def _ms(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median:.1f} [{t.q1:.1f}, {t.q3:.1f}]"


def format_rows(rows: list[BenchRow]) -> str:
    """A markdown table: times are median [q1, q3] in ms."""
    header = ("method", "budget", "visual in→LLM→last", "TTFT ms", "prefill ms", "vtr overhead ms",
              "TTFT/ideal", "decode tok/s", "peak MB", "TFLOPs")
    body = [(r.method, r.budget, f"{r.visual_in}→{r.visual_llm}→{r.visual_last_layer}", _ms(r.ttft_ms),
             _ms(r.prefill_ms), _ms(r.reduction_ms),
             "-" if r.ttft_over_ideal is None else f"{r.ttft_over_ideal:.3f}", f"{r.decode_tok_s:.1f}",
             "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}", "-" if r.tflops is None else f"{r.tflops:.4g}")
            for r in rows]
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])


def rows_to_json(rows: list[BenchRow], meta: dict) -> str:
    return json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
