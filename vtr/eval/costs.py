"""Means per evaluated sample of vtr's per-request records (``vtr.eval.records.call_record``).

One definition, used by the model classes (the means they put into lmms-eval's results JSON) and by
the sweep (which reads them from the sample logs). A multiple-choice sample makes one request per
choice: its visual tokens are the mean over those requests (they see the same image) and its FLOPs
their sum (the compute the sample cost). Visual tokens are counted three ways: all of them, the
content tokens a budget counts, and the structural newline tokens AnyRes / OneVision add (which
in-LLM methods never prune), so that families with and without newlines compare fairly.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

Record = dict[str, Any]
STAGES = ("before", "llm_input", "kept")  # the visual input, entering the LLM, seen by its last layer


def request_tokens(record: Record) -> dict[str, dict[str, float]]:
    """Visual, content and newline tokens of one request at each stage."""
    newlines_before = record.get("visual_newlines_before", 0)
    newlines_after = record.get("visual_newlines_after", 0)
    visual = {"before": record["visual_before"], "llm_input": record["visual_after"], "kept": record["visual_kept"]}
    newlines = {"before": newlines_before, "llm_input": newlines_after, "kept": newlines_after}
    return {"visual_tokens": visual, "newline_tokens": newlines,
            "content_tokens": {stage: visual[stage] - newlines[stage] for stage in STAGES}}


def summarize(samples: Iterable[list[Record]]) -> dict[str, Any]:
    """``samples``: the records of each sample's requests. Means per sample; ``tflops_per_sample`` is
    ``None`` when any request has no FLOPs figure."""
    per_sample = [_sample_cost(records) for records in samples if records]
    if not per_sample:
        return {"samples": 0, "visual_tokens": None, "content_tokens": None, "newline_tokens": None,
                "tflops_per_sample": None}
    flops = [cost["flops"] for cost in per_sample]
    return {
        "samples": len(per_sample),
        **{kind: {stage: statistics.fmean(cost[kind][stage] for cost in per_sample) for stage in STAGES}
           for kind in ("visual_tokens", "content_tokens", "newline_tokens")},
        "tflops_per_sample": None if None in flops else statistics.fmean(flops) / 1e12,
    }


def flat(summary: dict[str, Any], prefix: str = "vtr_") -> dict[str, float]:
    """``{"vtr_content_tokens_kept": 8.0, ...}``: the numbers of ``summarize`` under one level of keys."""
    out: dict[str, float] = {f"{prefix}samples": float(summary["samples"])}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update({f"{prefix}{key}_{stage}": float(number) for stage, number in value.items()})
        elif key != "samples" and value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out


def _sample_cost(records: list[Record]) -> dict[str, Any]:
    tokens = [request_tokens(record) for record in records]
    flops = [record["flops"] for record in records]
    return {
        **{kind: {stage: statistics.fmean(t[kind][stage] for t in tokens) for stage in STAGES}
           for kind in ("visual_tokens", "content_tokens", "newline_tokens")},
        "flops": None if None in flops else sum(flops),
    }
