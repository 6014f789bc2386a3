"""PyramidDrop (Xing et al., CVPR 2025): at the end of each stage keep a fraction ``ratio`` of the
visual tokens, ranked by the last instruction token's attention; 32-layer default stages end at layers
8, 16 and 24 (moved to the same relative depth for other LLMs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from vtr.errors import ReductionError
from vtr.methods.layer import LayerInput, LayerMethod, scaled_layer

REFERENCE_DEPTH = 32
REFERENCE_LAYERS = (8, 16, 24)


@dataclass(frozen=True)
class PDrop(LayerMethod):
    """``layers``: pruning layers (default: 8/16/24 of 32, scaled); ``ratio``: keep ratio per stage.

    ``budget`` (optional) replaces ``ratio`` so that the visual tokens averaged over all decoder layers
    equal the budget ("equivalent tokens", how papers compare PDrop with single-layer methods); the ratio
    is solved per visual input. A budget below what the layers before the first stage already cost
    cannot be met and raises ``ReductionError`` (move the first stage earlier).
    """

    name: ClassVar[str] = "pdrop"
    budget_required: ClassVar[bool] = False

    layers: tuple[int, ...] | None = None
    ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"pdrop ratio (tokens kept per stage) must lie in (0, 1], got {self.ratio}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return tuple(sorted({scaled_layer(k, REFERENCE_DEPTH, num_layers) for k in REFERENCE_LAYERS}))

    def keep_counts(self, step: LayerInput) -> Tensor:
        entry = step.entry_counts
        ratio = torch.full(entry.shape, self.ratio, dtype=torch.float64, device=entry.device)
        if self.budget is not None:
            ratio = self._ratio_for_average(entry, step.num_layers)
        counts = torch.round(entry.double() * ratio ** (step.stage + 1)).long()
        return counts.clamp(min=1).minimum(step.current_counts())

    def _ratio_for_average(self, entry: Tensor, num_layers: int) -> Tensor:
        """Per visual input, the ratio whose layer-averaged token count equals the budget.

        Solved by bisection on host floats: one small polynomial per visual input (not per token), which
        on a GPU costs far less than the kernel launches of a batched device bisection.
        """
        layers = self.prune_layers(num_layers)
        spans = [b - a for a, b in zip(layers, layers[1:] + (num_layers,))]
        floor = layers[0] / num_layers  # the fraction the unpruned first layers cost on their own
        ratios = []
        for n, k in zip(entry.tolist(), self.budget.tokens_for_counts(entry).tolist()):
            target = k / max(n, 1)
            if target < floor:
                raise ReductionError(
                    f"pdrop cannot average {self.budget} visual tokens per layer: layers 0-{layers[0] - 1} see "
                    f"all {n} tokens, at least {floor * n:.0f} per layer on average; pass earlier stage layers "
                    f"(e.g. layers=(2, 8, 16)) or a larger budget"
                )
            low, high = 0.0, 1.0
            for _ in range(50):  # the average grows monotonically with the ratio
                mid = (low + high) / 2
                average = (layers[0] + sum(span * mid ** (s + 1) for s, span in enumerate(spans))) / num_layers
                low, high = (mid, high) if average < target else (low, mid)
            ratios.append((low + high) / 2)
        return torch.tensor(ratios, dtype=torch.float64, device=entry.device)
