"""Read one lmms-eval run back: task scores from its results JSON, and visual tokens and FLOPs per
sample from the ``"vtr"`` records in its sample logs (see ``vtr.eval.records``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vtr.eval import costs
from vtr.eval.runner import RunOutput


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {"metric,filter": value}}`` for every numeric metric; stderr entries and aliases dropped."""
    return {
        task: {name: float(value) for name, value in metrics.items()
               if "_stderr" not in name and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for task, metrics in results.get("results", {}).items()
    }


def sample_costs(samples_files: tuple[Path, ...]) -> dict[str, Any]:
    """Means over logged samples of visual, content and newline tokens and TFLOPs (``vtr.eval.costs``)."""
    return costs.summarize(_records(samples_files))


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
