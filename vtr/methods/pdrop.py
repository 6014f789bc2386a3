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
        """Per visual input, the ratio whose layer-averaged token count equals the budget (bisection)."""
        layers = self.prune_layers(num_layers)
        spans = torch.tensor([b - a for a, b in zip(layers, layers[1:] + (num_layers,))], dtype=torch.float64,
                             device=entry.device)
        powers = torch.arange(1, len(layers) + 1, dtype=torch.float64, device=entry.device)
        target = self.budget.tokens_for_counts(entry).double() / entry.double().clamp(min=1)
        floor = layers[0] / num_layers  # the fraction the unpruned first layers cost on their own
        if bool((target < floor).any()):
            raise ReductionError(
                f"pdrop cannot average {self.budget} visual tokens per layer: layers 0-{layers[0] - 1} see all "
                f"{int(entry.max())} tokens, at least {floor * float(entry.max()):.0f} per layer on average; "
                f"pass earlier stage layers (e.g. layers=(2, 8, 16)) or a larger budget"
            )
        low, high = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(50):  # bisection on a monotone polynomial; 50 halvings reach float64 resolution
            mid = (low + high) / 2
            average = (layers[0] + (spans * mid.unsqueeze(-1) ** powers).sum(-1)) / num_layers
            low, high = torch.where(average < target, mid, low), torch.where(average < target, high, mid)
        return (low + high) / 2
