"""Bipartite soft matching and size-weighted merging of encoder tokens (ToMe, DyMU's DToMe), batched.

A batch holds one encoder sequence per row. Rows lose different numbers of tokens (DyMU), so every row
keeps its valid tokens packed at the front, in their original order, followed by padding tokens of
size 0. ``protected`` leading tokens (CLIP's class token; none for SigLIP) are never merged.

Unlike the ToMe reference, which concatenates the unmerged A tokens before the B tokens, a merge here
keeps the sequence order: a merged token stays where its surviving B token was. Tokens therefore reach
the LLM in raster order, and the next layer's even/odd split is the same for a row alone or in a
batch (the reference's batch and single-image paths disagree on this, see the reference notes).

Why the shapes are what they are: one merge step runs after every encoder layer, so its op count is
multiplied by the depth (23 layers for CLIP-L/336). Row lengths are therefore kept on the host (a merge
knows how many tokens each row loses before it runs), and masks for padding are only built when some
row is padded: ToMe, which merges the same count in every row, never pays for them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vtr.ops.packing import front_packed


@dataclass(frozen=True)
class MergeState:
    """The bookkeeping of merged encoder sequences (B rows, N current tokens, N0 original tokens).

    ``size``: original tokens each current token stands for (0 on padding), float32. ``slot``: the
    original index of each current token's surviving representative (ascending per row; -1 on padding).
    ``source``: the current token each original token belongs to (provenance). ``lengths``: valid
    tokens per row, on the host.
    """

    size: Tensor  # (B, N)
    slot: Tensor  # (B, N)
    source: Tensor  # (B, N0)
    lengths: tuple[int, ...]

    @classmethod
    def start(cls, batch: int, tokens: int, device: torch.device) -> "MergeState":
        index = torch.arange(tokens, device=device).expand(batch, -1)
        return cls(torch.ones(batch, tokens, device=device), index.clone(), index.clone(), (tokens,) * batch)

    @property
    def padded(self) -> bool:
        """Whether some row is shorter than the batch (it then ends in padding tokens)."""
        return min(self.lengths) < self.size.shape[1]

    # cached: a state is immutable, and a merge step of a padded batch reads it several times
    @functools.cached_property
    def valid(self) -> Tensor:
        return self.size > 0

    def attention_bias(self, dtype: torch.dtype) -> Tensor:
        """Proportional attention: ``log(size)`` added to every key column, ``-inf`` on padding (B, 1, 1, N).

        A token standing for s patches then gets the attention s copies of it would get together.
        """
        batch, n = self.size.shape
        return self.size.log().to(dtype).view(batch, 1, 1, n)

    def caps(self, protected: int) -> tuple[int, ...]:
        """Per row, the most A tokens one layer may merge (``max_merges`` of the row's length)."""
        return tuple(max_merges(n, protected) for n in self.lengths)


@dataclass(frozen=True)
class Matching:
    """Each candidate A token's best B partner. A tokens are the even current indices, B tokens the odd
    ones; the candidates are the A tokens from index ``first`` on (the protected class token is not one)."""

    similarity: Tensor  # (B, Na) cosine similarity to the best B token; -inf where the candidate may not merge
    partner: Tensor  # (B, Na) that B token's index among the B tokens (current index 2 * partner + 1)
    first: int  # current index of candidate 0

    def ranked(self, count: int) -> Tensor:
        """(B, count) the ``count`` most similar candidates of every row, best first; equal similarities
        take the lower index (a stable sort), as the ToMe reference's ``argsort`` does on CPU."""
        return self.similarity.sort(dim=1, descending=True, stable=True).indices[:, :count]


def bipartite_matching(metric: Tensor, state: MergeState, protected: int = 1) -> Matching:
    """Best B partner of every candidate A token by cosine similarity of ``metric`` (B, N, C); the first
    ``protected`` tokens (0 or 1: the class token) never merge, nor do padding tokens, nor into them.

    Similarities are computed in float32 whatever the encoder's dtype. Equal similarities pick the
    lowest B index.
    """
    metric = metric.float()
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    first = 2 * protected
    scores = torch.bmm(unit[:, first::2], unit[:, 1::2].transpose(1, 2))  # (B, Na, Nb)
    if state.padded:
        scores = scores.masked_fill(~state.valid[:, None, 1::2], float("-inf"))
    similarity, best = scores.max(dim=-1)
    if state.padded:
        similarity = similarity.masked_fill(~state.valid[:, first::2], float("-inf"))
    return Matching(similarity, best, first)


def merge_tokens(x: Tensor, state: MergeState, matching: Matching, chosen: Tensor,
                 counts: Sequence[int]) -> tuple[Tensor, MergeState]:
    """Fold the candidates ``chosen`` (B, R: indices among ``matching``'s candidates, distinct per row) into
    their partner B tokens; only the first ``counts[b]`` entries of row b merge. Returns the shorter batch.

    Every token goes to its destination in the packed result (a survivor to its own new index, a merged
    token to its partner's), and each destination is the size-weighted mean of what arrives, accumulated
    in float32: ``sum(x * size) / sum(size)``, the reference's arithmetic, written straight into the
    packed rows. Survivors keep their order; the batch narrows to the longest row; padding rows are zero
    with size 0 (padding tokens, of size 0, add nothing to where they land). A row merging nothing in a
    batch where others merge keeps its exact values, as it would alone (where no merge step runs).
    """
    batch, _, width = x.shape
    lengths = tuple(n - c for n, c in zip(state.lengths, counts))
    longest = max(lengths)
    ragged = min(counts) < chosen.shape[1]  # some row merges fewer than R: its tail entries stay
    live = (torch.arange(chosen.shape[1], device=x.device) < torch.tensor(counts, device=x.device)[:, None]
            if ragged else None)

    gone = 2 * chosen + matching.first  # current index of each chosen A token
    into = 2 * matching.partner.gather(1, chosen) + 1  # current index of the B token it merges into
    # a tail entry (ragged rows) stays, unless it is padding
    survives = state.valid.scatter(1, gone, ~live) & state.valid if ragged else state.valid.scatter(1, gone, False)
    rank = survives.cumsum(1) - 1  # new index of each survivor
    joined = rank.gather(1, into)  # a merged token's new index is its partner's
    destination = rank.scatter(1, gone, torch.where(live, joined, rank.gather(1, gone)) if ragged else joined)

    weighted = x.float() * state.size.unsqueeze(-1)
    sums = weighted.new_zeros(batch, longest, width).scatter_add_(
        1, destination.unsqueeze(-1).expand(-1, -1, width), weighted)
    sizes = state.size.new_zeros(batch, longest).scatter_add_(1, destination, state.size)
    # padding slots of a short row received nothing: 0 / 1 keeps them zero (valid sizes are >= 1)
    new_x = (sums / (sizes.clamp_min(1) if min(lengths) < longest else sizes).unsqueeze(-1)).to(x.dtype)
    if ragged and not all(counts):
        merging = torch.tensor([c > 0 for c in counts], device=x.device)[:, None, None]
        new_x = torch.where(merging, new_x, x[:, :longest])
    index, valid = front_packed(survives, lengths)
    new_slot = state.slot.gather(1, index)
    if valid is not None:
        new_slot = new_slot.masked_fill(~valid, -1)
    return new_x, MergeState(sizes, new_slot, destination.gather(1, state.source), lengths)


def max_merges(tokens: int, protected: int = 1) -> int:
    """Most A tokens one layer merges in a sequence of ``tokens``: ToMe's cap of half the unprotected ones
    (with a class token that is every A token but the class token)."""
    return max(tokens - protected, 0) // 2
