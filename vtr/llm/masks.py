"""Attention masks for a sequence that lost columns at a decoder layer.

The model builds one mask per forward for the full sequence and hands it to every layer. Layers at and
after a pruning layer see fewer tokens, so their mask is the full one gathered at the kept columns
(queries and keys on a full pass, keys only on a decode step, whose queries are the new tokens).
Rows of a padded batch keep different counts; they are left-filled with *pad slots* whose key column
is masked and whose query row sees nothing, exactly like the model's own left padding.

Masks come in the kinds transformers 5.x passes to layers: ``None`` (SDPA with no padding: causal by
``is_causal``), 4-D bool (SDPA: True = attend), 4-D float (eager: additive, ``finfo.min`` = masked)
and 2-D (flash attention: the padding mask).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _masked_value(mask: Tensor):
    return False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min


def _gather_keys(mask: Tensor, key_index: Tensor) -> Tensor:
    """Columns ``key_index`` (B, K) of the last axis of a (B|1, H|1, Q, L) mask."""
    mask = mask.expand(key_index.shape[0], *mask.shape[1:])
    index = key_index.view(key_index.shape[0], 1, 1, -1).expand(-1, mask.shape[1], mask.shape[2], -1)
    return mask.gather(3, index)


def _mask_slots(mask: Tensor, key_valid: Tensor, query_valid: Tensor | None) -> Tensor:
    """Mask pad-slot key columns (and their query rows on a full pass)."""
    blocked = ~key_valid.view(key_valid.shape[0], 1, 1, -1)
    if query_valid is not None:
        blocked = blocked | ~query_valid.view(query_valid.shape[0], 1, -1, 1)
    return mask.masked_fill(blocked, _masked_value(mask))


def full_pass_mask(mask: Tensor | None, index: Tensor, valid: Tensor, all_valid: bool,
                   flash: bool) -> Tensor | None:
    """The mask of a full pass (prefill, or an uncached step) restricted to columns ``index`` (B, N).

    ``valid`` (B, N) is False on pad slots; ``all_valid``: there are none (known from the packing, so no
    host read here). With no pad slots a ``None`` mask stays ``None``: the kept columns keep their order,
    so causal attention over the shorter sequence is the same attention.
    """
    if mask is not None:  # the index may come from another device of a split model
        index, valid = index.to(mask.device), valid.to(mask.device)
    if mask is None:
        if all_valid:
            return None
        if flash:
            return valid.long()
        n = index.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=index.device).tril()
        return _mask_slots(causal.expand(index.shape[0], 1, n, n), valid, valid)
    if mask.dim() == 2:
        return mask.gather(1, index) * valid.to(mask.dtype)
    rows = mask.expand(index.shape[0], *mask.shape[1:])
    rows = rows.gather(2, index.view(index.shape[0], 1, -1, 1).expand(-1, rows.shape[1], -1, rows.shape[3]))
    return _mask_slots(_gather_keys(rows, index), valid, None if all_valid else valid)


def decode_mask(mask: Tensor | None, key_index: Tensor, key_valid: Tensor, all_valid: bool, queries: int,
                flash: bool) -> Tensor | None:
    """The mask of a cached step at a layer whose cache holds the columns ``key_index`` (B, K).

    ``key_index`` indexes the full-length key axis the model built the mask for (its layer 0 cache plus
    the new tokens); ``all_valid``: ``key_valid`` has no pad slot. A ``None`` mask (nothing to mask) only
    needs building when pad slots exist.
    """
    if mask is not None:  # the index may come from another device of a split model
        key_index, key_valid = key_index.to(mask.device), key_valid.to(mask.device)
    if mask is None:
        if all_valid:
            return None
        if flash:
            return key_valid.long()
        return key_valid.view(key_valid.shape[0], 1, 1, -1).expand(-1, 1, queries, -1)
    if mask.dim() == 2:
        return mask.gather(1, key_index) * key_valid.to(mask.dtype)
    return _mask_slots(_gather_keys(mask, key_index), key_valid, None)


def window_decode_mask(key_columns: Tensor, key_valid: Tensor, query_columns: Tensor, window: int | None,
                       like: Tensor | None) -> Tensor:
    """The mask of a cached step at a sliding-window layer after a prune, built from columns alone.

    The model sized its sliding mask for its first sliding layer's cache (the last ``window - 1`` positions),
    not for this layer's, which holds the last ``window - 1`` *kept* columns. The window stays in original
    positions (``vtr.llm.pruner``): a new token at column q attends the held keys k with q - window < k <= q
    that are real (``key_valid``: not pad slots, not padding); ``window=None``: a global layer, every held
    key up to q. ``key_columns`` (B, K) and ``query_columns`` (Q,) are full-pass columns; ``like`` gives the
    kind (float additive for eager, else bool).
    """
    keys, queries = key_columns.view(key_columns.shape[0], 1, 1, -1), query_columns.view(1, 1, -1, 1)
    allowed = key_valid.view_as(keys) & (keys <= queries)
    if window is not None:
        allowed = allowed & (keys > queries - window)
    if like is not None and like.dtype != torch.bool:
        return torch.zeros(allowed.shape, dtype=like.dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(like.dtype).min)
    return allowed


def bidirectional_mask(mask: Tensor | None, key_valid: Tensor, flash: bool) -> Tensor | None:
    """A non-causal mask over the same keys: what the HoliTom reference's layer K-1 ran with under SDPA.

    Only used behind ``reference_quirks=True``.
    """
    if flash:
        raise ValueError("reference_quirks=True (a non-causal layer K-1) is not available under flash attention")
    n = key_valid.shape[1]
    allowed = key_valid.view(key_valid.shape[0], 1, 1, n).expand(-1, 1, n, -1)
    if mask is not None and mask.dtype != torch.bool:
        return torch.zeros(allowed.shape, dtype=mask.dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(mask.dtype).min)
    return allowed
