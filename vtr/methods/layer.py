"""The protocol of methods that act inside the LLM, at one or more decoder layers.

At each of its pruning layers the engine (``vtr.llm.pruner``) hands the method the hidden states
entering that layer, the attention that the chosen query tokens paid to every token (at the layer
before, or recomputed with the layer's own projections: ``scores_own_layer``), and the visual input
(group) each candidate token belongs to. The method answers which
candidates stay, and may rewrite hidden states (merging). Everything is batched: one call per layer for
the whole padded batch, with per-group keep counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from vtr.budget import Budget, as_budget
from vtr.costs.counting import linear, scores
from vtr.methods.base import Method, Stage
from vtr.methods.cost import SampleWork
from vtr.methods.options import option
from vtr.ops.groups import topk_per_group

Query = Literal["last", "text"]


@dataclass(frozen=True)
class LayerInput:
    """What a method sees at one pruning layer (B rows, L current columns, G visual inputs).

    The counts are host integers: the engine knows every visual input's size, and a stage keeps exactly
    ``min(keep count, current count)`` of each, so keep counts are host arithmetic plus one copy to the
    device per stage, never a count read back from it."""

    hidden: Tensor  # (B, L, D) hidden states entering the layer (before its input norm)
    scores: Tensor  # (B, L) float32 attention from the query tokens at the previous layer
    group: Tensor  # (B, L) visual input of each candidate content token, -1 for everything else
    stage: int  # index of this layer in ``method.prune_layers``
    entry_counts: tuple[int, ...]  # (G,) content tokens each visual input had when it entered the LLM
    counts: tuple[int, ...]  # (G,) candidate tokens each visual input still has at this layer
    num_layers: int


@dataclass(frozen=True)
class LayerOutput:
    keep: Tensor  # (B, L) bool; only candidate columns are read, unless ``others_kept``
    hidden: Tensor | None = None  # rewritten hidden states (merging), else the input's
    counts: tuple[int, ...] | None = None  # (G,) candidates each visual input kept, when the method knows
    others_kept: bool = False  # ``keep`` is True on every column that is not a candidate: final as it is


def top_scored(step: LayerInput, counts: tuple[int, ...]) -> LayerOutput:
    """Keep the ``counts[g]`` best-scored candidates of every visual input ``g``, and every other column."""
    keep = topk_per_group(step.scores, step.group, counts, others=True)
    return LayerOutput(keep, counts=tuple(map(min, counts, step.counts)), others_kept=True)


def scaled_layer(reference_layer: int, reference_depth: int, num_layers: int) -> int:
    """A layer index given for a ``reference_depth``-layer LLM, moved to the same relative depth."""
    return max(1, min(num_layers - 1, round(reference_layer * num_layers / reference_depth)))


@dataclass(frozen=True)
class LayerMethod(Method):
    """Base of in-LLM methods: keep, per visual input, the candidates its query tokens attend to most.

    ``query``: ``"last"`` = the last prompt token's attention (FastV, PDrop, HoliTom), ``"text"`` =
    the mean over every text token of the prompt.
    """

    stage: ClassVar[Stage] = Stage.LLM
    budget_required: ClassVar[bool] = True

    budget: Budget | int | float | None = option(None, convert=as_budget)
    query: Query = "last"

    @property
    def scores_own_layer(self) -> bool:
        """Whether pruning layer K scores with its own input norm and q/k projections of the hidden states
        leaving layer K-1 (the PDrop reference) instead of layer K-1's attention (FastV's convention)."""
        return False

    @property
    def renumbers_positions(self) -> bool:
        """Whether kept tokens move down by the number of tokens dropped before them (the PDrop
        reference) instead of keeping their original positions."""
        return False

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:  # pragma: no cover - interface
        """Decoder layers (ascending, each in [1, num_layers)) at whose input tokens are dropped."""
        raise NotImplementedError

    def keep_counts(self, step: LayerInput) -> tuple[int, ...]:  # pragma: no cover - interface
        """(G,) tokens each visual input keeps after this layer."""
        raise NotImplementedError

    def select(self, step: LayerInput) -> LayerOutput:
        return top_scored(step, self.keep_counts(step))

    def own_flops(self, work: SampleWork) -> float:
        """The score recompute (``vtr.llm.scores``) for every pruning layer K: k_proj of the tokens layer K-1
        saw, q_proj of the query rows, q k^T per head, at the attention layer that scores for K (the last before
        it on a hybrid stack). Scoring with layer K-1's projections or (PDrop's reference) layer K's costs the
        same; PDrop's renumbered rotary positions are elementwise."""
        visual = work.sample.visual_per_layer
        if not visual:  # no visual tokens: the in-LLM stage did not run
            return 0.0
        tokens, d, total = work.tokens_per_layer(), work.decoder.hidden, 0.0
        for k in self.check_layers(len(work.decoder.layers)):
            attention, n = work.decoder.scoring_attention(k, self.scores_own_layer), tokens[k - 1]
            queries = 1 if self.query == "last" else n - visual[k - 1]
            total += (linear(queries, d, attention.query_width)
                      + linear(n, d, attention.kv_heads * attention.head_dim)
                      + scores(attention.heads, attention.head_dim, queries, n))
        return total

    def check_layers(self, num_layers: int) -> tuple[int, ...]:
        """``prune_layers`` validated against the model's depth, with an error that says what to pass."""
        layers = tuple(self.prune_layers(num_layers))
        if not layers or any(not 1 <= k < num_layers for k in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(
                f"{self.describe()} would prune at decoder layers {list(layers)}, but this LLM has {num_layers} "
                f"layers: pruning layers must be ascending and within 1..{num_layers - 1} (layer 0 has no "
                f"previous layer to score tokens with; prune before the LLM instead)"
            )
        return layers
