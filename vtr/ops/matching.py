"""Bipartite soft matching and size-weighted merging of encoder tokens (ToMe, DyMU's DToMe), batched.

A batch holds one encoder sequence per row. Rows lose different numbers of tokens (DyMU), so every row
keeps its valid tokens packed at the front, in their original order, followed by padding tokens of
size 0. ``protected`` leading tokens (CLIP's class token; none for SigLIP) are never merged.

Unlike the ToMe reference, which concatenates the unmerged A tokens before the B tokens, a merge here
keeps the sequence order: a merged token stays where its surviving B token was. Tokens therefore reach
the LLM in raster order, and the next layer's even/odd split is the same for a row alone or in a
batch (the reference's batch and single-image paths disagree on this, see the reference notes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MergeState:
    """The bookkeeping of merged encoder sequences (B rows, N current tokens, N0 original tokens).

    ``size``: original tokens each current token stands for (0 on padding), float32. ``slot``: the
    original index of each current token's surviving representative (ascending per row; -1 on padding).
    ``source``: the current token each original token belongs to (provenance).
    """

    size: Tensor  # (B, N)
    slot: Tensor  # (B, N)
    source: Tensor  # (B, N0)

    @classmethod
    def start(cls, batch: int, tokens: int, device: torch.device) -> "MergeState":
        index = torch.arange(tokens, device=device).expand(batch, -1)
        return cls(torch.ones(batch, tokens, device=device), index.clone(), index.clone())

    # cached: a state is immutable, and every merge step reads both several times
    @functools.cached_property
    def valid(self) -> Tensor:
        return self.size > 0

    @functools.cached_property
    def counts(self) -> Tensor:
        """(B,) valid tokens per row."""
        return self.valid.sum(1)

    def attention_bias(self, dtype: torch.dtype) -> Tensor:
        """Proportional attention: ``log(size)`` added to every key column, ``-inf`` on padding (B, 1, 1, N).

        A token standing for s patches then gets the attention s copies of it would get together.
        """
        return self.size.log().to(dtype)[:, None, None, :]


@dataclass(frozen=True)
class Matching:
    """Each A token's best B partner: A tokens are the even current indices, B tokens the odd ones."""

    similarity: Tensor  # (B, Na) cosine similarity to the best B token
    partner: Tensor  # (B, Na) current index of that B token
    eligible: Tensor  # (B, Na) valid A tokens that may merge (never a protected token or padding)


def bipartite_matching(metric: Tensor, valid: Tensor, protected: int = 1) -> Matching:
    """Best B partner of every A token by cosine similarity of ``metric`` (B, N, C); ``valid`` (B, N); the
    first ``protected`` tokens (0 or 1: the class token) never merge.

    Similarities are computed in float32 whatever the encoder's dtype. Equal similarities pick the
    lowest B index.
    """
    unit = torch.nn.functional.normalize(metric.float(), dim=-1)
    a, b = unit[:, ::2], unit[:, 1::2]
    scores = a @ b.transpose(1, 2)  # (B, Na, Nb)
    scores = scores.masked_fill(~valid[:, 1::2].unsqueeze(1), float("-inf"))
    similarity, best = scores.max(dim=-1)
    eligible = valid[:, ::2] & torch.isfinite(similarity)
    eligible[:, :protected] = False  # the class token
    return Matching(similarity, 2 * best + 1, eligible)


def merge_tokens(x: Tensor, state: MergeState, merged: Tensor, partner: Tensor) -> tuple[Tensor, MergeState]:
    """Fold the A tokens ``merged`` (B, Na) into their ``partner`` B tokens; returns the shorter batch.

    A group's hidden state is the size-weighted mean of its members, accumulated in float32 (tokens
    that receive nothing keep their exact values). Survivors keep their order and are packed to the
    front of each row; the batch narrows to the longest row; padding rows are zero with size 0.
    """
    batch, n, width = x.shape
    positions = torch.arange(n, device=x.device)
    into = positions.expand(batch, -1).clone()  # the current token each token ends up in
    a_index = positions[::2].expand(batch, -1)
    into[:, ::2] = torch.where(merged, partner, a_index)
    survives = state.valid & (into == positions)

    weighted = x.float() * state.size.unsqueeze(-1)
    sums = torch.zeros(batch, n, width, device=x.device).scatter_add_(1, into.unsqueeze(-1).expand(-1, -1, width),
                                                                        weighted)
    sizes = torch.zeros(batch, n, device=x.device).scatter_add_(1, into, state.size)
    receives = torch.zeros(batch, n, dtype=torch.long, device=x.device).scatter_add_(1, into, torch.ones_like(into))
    values = torch.where((receives > 1).unsqueeze(-1), (sums / sizes.clamp_min(1e-12).unsqueeze(-1)).to(x.dtype), x)

    rank = survives.long().cumsum(1) - 1  # new index of each survivor
    # survivors to the front, in order: a stable sort of the flags (descending: True first), one host read
    flags, order = survives.sort(dim=1, descending=True, stable=True)
    lengths = flags.sum(1).tolist()
    new_n = max(lengths)
    index, valid = order[:, :new_n], flags[:, :new_n]
    new_x = values.gather(1, index.unsqueeze(-1).expand(-1, -1, width))
    new_size, new_slot = sizes.gather(1, index), state.slot.gather(1, index)
    if min(lengths) < new_n:  # padding rows: zero, size 0, no slot
        padding = ~valid
        new_x = new_x.masked_fill(padding.unsqueeze(-1), 0)
        new_size, new_slot = new_size.masked_fill(padding, 0), new_slot.masked_fill(padding, -1)
    to_new = rank.gather(1, into)  # current token -> new index of the token it ends up in
    return new_x, MergeState(new_size, new_slot, to_new.gather(1, state.source))


def top_r_per_row(similarity: Tensor, eligible: Tensor, r: int | Tensor) -> Tensor:
    """The ``r`` most similar eligible A tokens of every row (ToMe); equal scores take the lower index.
    ``r``: one count for every row, or a (B,) tensor of per-row counts."""
    scores = similarity.masked_fill(~eligible, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    limit = r.view(-1, 1) if isinstance(r, Tensor) else r
    return (torch.empty_like(order).scatter_(1, order, ranks) < limit) & eligible


def capped_merges(merged: Tensor, similarity: Tensor, counts: Tensor, protected: int) -> Tensor:
    """``merged`` (B, Na) limited to ``max_merges`` of each row's ``counts`` (B,) valid tokens, the most
    similar first: the reference's ``r = min(r, (t - protected) // 2)``.

    It only bites without a class token on an odd number of tokens (SigLIP's 729), where every one of
    the (t + 1) / 2 A tokens may pass a threshold: the reference then leaves the least similar one alone.
    """
    cap = (counts - protected).clamp_min(0) // 2
    return top_r_per_row(similarity, merged, cap)


def max_merges(tokens: int, protected: int = 1) -> int:
    """Most A tokens one layer merges in a sequence of ``tokens``: ToMe's cap of half the unprotected ones
    (with a class token that is every A token but the class token)."""
    return max(tokens - protected, 0) // 2
