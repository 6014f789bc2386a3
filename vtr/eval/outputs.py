"""Read one lmms-eval run back: task scores from its results JSON, and visual tokens and FLOPs per
sample from the ``"vtr"`` records in its sample logs (see ``vtr.eval.records``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from vtr.eval.runner import RunOutput


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {"metric,filter": value}}`` for every numeric metric; stderr entries and aliases dropped."""
    return {
        task: {name: float(value) for name, value in metrics.items()
               if "_stderr" not in name and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for task, metrics in results.get("results", {}).items()
    }


def sample_costs(samples_files: tuple[Path, ...]) -> dict[str, Any]:
    """Means over logged samples: visual tokens (before / entering the LLM / at its last layer) and TFLOPs.

    A multiple-choice sample makes one request per choice: its visual tokens are the mean over those
    requests (they see the same image) and its FLOPs their sum (the compute the sample cost).
    ``tflops_per_sample`` is ``None`` when any request has no FLOPs figure.
    """
    per_sample = [_sample_cost(records) for records in _records(samples_files) if records]
    if not per_sample:
        return {"samples": 0, "visual_tokens": None, "tflops_per_sample": None}
    flops = [cost["flops"] for cost in per_sample]
    return {
        "samples": len(per_sample),
        "visual_tokens": {key: statistics.fmean(cost[key] for cost in per_sample)
                          for key in ("before", "llm_input", "kept")},
        "tflops_per_sample": None if None in flops else statistics.fmean(flops) / 1e12,
    }


def summarize_run(run: RunOutput) -> dict[str, Any]:
    """The numbers a results.jsonl line keeps about one run."""
    return {"scores": task_scores(run.results()), **sample_costs(run.samples_files)}


def _records(samples_files: tuple[Path, ...]):
    """Per logged sample: the vtr records of its requests."""
    for path in samples_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                counts = json.loads(line).get("token_counts") or []
                yield [entry["vtr"] for entry in counts if isinstance(entry, dict) and entry.get("vtr")]


def _sample_cost(records: list[dict[str, Any]]) -> dict[str, Any]:
    flops = [record["flops"] for record in records]
    return {
        "before": statistics.fmean(record["visual_before"] for record in records),
        "llm_input": statistics.fmean(record["visual_after"] for record in records),
        "kept": statistics.fmean(record["visual_kept"] for record in records),
        "flops": None if None in flops else sum(flops),
    }
