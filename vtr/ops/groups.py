"""Kernels over tokens that belong to groups (a group = one visual input of one batch row).

In-LLM methods act on a whole padded batch at once: every candidate token carries the id of its group,
and each group keeps its own number of tokens. These kernels do that without a Python loop over tokens
or groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rank_in_group(group: Tensor, order_key: Tensor) -> Tensor:
    """0-based rank of each element within its group when the group is sorted by ``order_key`` ascending.

    ``group`` and ``order_key`` are 1-D of the same length; ties in ``order_key`` rank the lower index
    first (stable sorts), so results never depend on the sort kernel.
    """
    by_key = torch.sort(order_key, stable=True).indices
    by_group = by_key[torch.sort(group[by_key], stable=True).indices]
    sorted_groups = group[by_group]
    n = group.numel()
    positions = torch.arange(n, device=group.device)
    starts = torch.ones(n, dtype=torch.bool, device=group.device)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    ranks = torch.empty_like(positions)
    ranks[by_group] = positions - group_start
    return ranks


def topk_per_group(scores: Tensor, group: Tensor, k: Sequence[int], others: bool = False) -> Tensor:
    """Boolean mask keeping the ``k[g]`` highest-scoring elements of every group ``g``.

    ``scores`` and ``group`` have one shape; elements with ``group == -1`` (non-members) are never kept, or
    all kept with ``others=True`` (for a caller that keeps every other column anyway). Equal scores keep the
    lower flat index first. ``k``: host counts indexed by group id (copied to the device in one op).

    Sync-free and of fixed op count: non-members join a spare last group that keeps none or all, so no host
    read of which elements are members (``nonzero``) or of whether any is; the two stable sorts order the
    elements by group, best first within each, and an element's rank is its place after its group's start
    (a binary search in the sorted group ids).
    """
    limits = torch.tensor((*k, group.numel() if others else 0), device=group.device)
    flat_group = group.flatten().remainder(limits.numel())  # -1 -> the spare group
    by_score = torch.sort(scores.flatten().float().neg(), stable=True).indices
    sorted_groups, order = torch.sort(flat_group[by_score], stable=True)
    by_group = by_score[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups)  # where each element's group begins
    rank = torch.arange(flat_group.numel(), device=group.device) - starts
    limit = limits[sorted_groups]
    keep = torch.empty_like(flat_group, dtype=torch.bool).scatter_(0, by_group, rank < limit)
    return keep.view(group.shape)


def fold_into_nearest(hidden: Tensor, kept: Tensor, group: Tensor) -> Tensor:
    """Fold every dropped group member into its most similar kept member of the same group (HoliTom).

    ``hidden`` (B, L, D); ``kept`` (B, L) bool; ``group`` (B, L) group ids, -1 for non-members. Each
    dropped member picks the kept member of its group with the highest cosine similarity (lowest index on
    ties), similarities taken before any update. The reference then averages pairwise in ascending source
    order, ``h_d <- (h_d + h_s) / 2``; the closed form used here is
    ``h_d' = 2^-m h_d + sum_k 2^-(m-k+1) h_{s_k}`` for sources ``s_1 < ... < s_m``, so later sources weigh
    more. Accumulates in float32 (or the input's wider type); returns ``hidden`` with the kept rows updated (dropped rows unchanged).
    """
    member = group >= 0
    source = member & ~kept
    if not bool(source.any()):
        return hidden
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)  # (B, L, L)
    allowed = (group.unsqueeze(2) == group.unsqueeze(1)) & kept.unsqueeze(1) & member.unsqueeze(2)
    similarity = similarity.masked_fill(~allowed, float("-inf"))
    batch, src = source.nonzero(as_tuple=True)
    dst = similarity[batch, src].argmax(-1)  # lowest index among equal maxima
    width = hidden.shape[1]
    target = batch * width + dst  # flat id of the receiving token
    # rank k (1-based) of each source among the sources of its target, in ascending source order
    k = rank_in_group(target, src) + 1
    m = torch.bincount(target, minlength=hidden.shape[0] * width)[target]
    source_weight = torch.pow(2.0, -(m - k + 1).float())
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = flat.to(accumulate)  # a copy for half types; float32 round-trips them exactly
    out = out.clone() if out.data_ptr() == flat.data_ptr() else out
    receivers = torch.unique(target)
    receiver_m = torch.bincount(target, minlength=flat.shape[0])[receivers]
    out[receivers] = out[receivers] * torch.pow(2.0, -receiver_m.to(accumulate)).unsqueeze(1)
    out.index_add_(0, target, flat[batch * width + src].to(accumulate) * source_weight.to(accumulate).unsqueeze(1))
    return out.to(hidden.dtype).view_as(hidden)
