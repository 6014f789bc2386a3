"""DyMU (Wang et al., arXiv 2504.17040): dynamic token merging in the vision encoder (DToMe) plus virtual
token unmerging in the LLM (VTU, ``vtr.llm.unmerge``).

DToMe is ToMe's bipartite matching without a fixed count: after layer l every A token whose best B
partner has cosine similarity strictly above the layer's threshold tau_l merges, so simple images lose
more tokens than busy ones. The thresholds are calibrated once per encoder (``vtr.vision.calibrate``),
so that the average image loses a target number of tokens per layer; vtr ships none for real
checkpoints. ``vtu`` is on by default, as in the reference's inference setup (``vtu=False`` is the
paper's "DToMe w/o VTU" ablation).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from torch import Tensor

from vtr.methods.vision import EncoderGeometry, VisionMethod


def load_thresholds(source: str | os.PathLike | Sequence[float]) -> tuple[float, ...]:
    """Per-layer thresholds from a list, or from a JSON file holding a list or ``{"thresholds": [...]}``
    (what ``vtr calibrate`` writes)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"dymu could not read thresholds from {os.fspath(source)!r}: {error}; write them "
                             f"with `vtr calibrate --out FILE` or pass thresholds=[...]") from None
        source = data["thresholds"] if isinstance(data, dict) and "thresholds" in data else data
    if isinstance(source, (str, bytes)) or not isinstance(source, Sequence) or not source:
        raise ValueError(f"dymu thresholds must be a non-empty list of floats (one per encoder layer), got {source!r}")
    values = tuple(float(v) for v in source)
    if any(math.isnan(v) for v in values):
        raise ValueError(f"dymu thresholds must not be NaN, got {list(values)}")
    return values


@dataclass(frozen=True)
class _ThresholdMatcher:
    thresholds: tuple[float, ...]

    def active(self, layer: int) -> bool:
        return self.thresholds[layer] < math.inf

    def merges(self, layer: int, similarity: Tensor) -> list[int]:
        return (similarity > self.thresholds[layer]).sum(1).tolist()  # one host read per merging layer


@dataclass(frozen=True)
class DyMU(VisionMethod):
    """``thresholds``: a JSON file path (``vtr calibrate --out``) or a list, one cosine-similarity threshold
    per encoder layer up to the feature layer (or per encoder layer: those after the feature layer are
    ignored). ``math.inf`` switches a layer's merging off."""

    name: ClassVar[str] = "dymu"

    vtu: bool = field(default=True, kw_only=True)
    thresholds: str | os.PathLike | Sequence[float] | None = None
    values: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.thresholds is None:
            raise ValueError("dymu needs thresholds=PATH (a JSON file written by `vtr calibrate`) or thresholds=[...], "
                             "one per vision-encoder layer; vtr ships none for real checkpoints")
        object.__setattr__(self, "values", load_thresholds(self.thresholds))
        if not isinstance(self.thresholds, (str, os.PathLike)):
            object.__setattr__(self, "thresholds", self.values)  # a list becomes a (hashable) tuple

    def matcher(self, geometry: EncoderGeometry) -> _ThresholdMatcher:
        if len(self.values) not in (geometry.merge_layers, geometry.depth):
            raise ValueError(
                f"dymu has {len(self.values)} thresholds, but this encoder merges after {geometry.merge_layers} "
                f"layers (up to its feature layer) of {geometry.depth}; pass one threshold per merging layer or "
                f"per encoder layer (calibrate them for this model with `vtr calibrate`)"
            )
        return _ThresholdMatcher(self.values[:geometry.merge_layers])
