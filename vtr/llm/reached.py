"""Which LLM tokens of each visual item reached the last decoder layer, for ``vtr.stats`` and its pictures.

An in-LLM stage drops visual columns at decoder layers; the last full pass's column index (``LayerRun.
final_index``) says which columns survived every drop. A visual item's k-th kept column (in prompt order)
is its k-th kept token, so the survivors become token indices per item, the space
``ItemStats.provenance`` points into.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reached_last_layer(final_index: Tensor, token_item: Tensor, step: int) -> list[list[tuple[int, ...]]]:
    """Per batch row, per visual item of that row (in item-id order, which is the order ``vtr.stats`` lists
    them), the item's tokens reaching the last layer. ``final_index`` (rows of the pass, N): full-pass column
    of each output column, -1 on pad slots; ``token_item`` (B, L'): item id of each content column, -1
    elsewhere; ``step``: pass rows per batch row (beams)."""
    items = token_item.cpu()
    batch, length = items.shape
    final = final_index[::step].cpu()
    final = final.masked_fill((final < 0) | (final >= length), length)  # pad slots, generated tokens
    reached = items.new_zeros(batch, length + 1, dtype=bool).scatter_(1, final, True)[:, :length]
    flat = items.flatten()
    content = flat >= 0
    ids = flat[content]  # item id of each content column, row-major prompt order
    count = int(ids.max()) + 1 if ids.numel() else 0
    sizes = ids.bincount(minlength=count)
    order = ids.argsort(stable=True)  # grouped by item, prompt order within each: the k-th is token k
    rank = torch.arange(ids.numel()) - (sizes.cumsum(0) - sizes).repeat_interleave(sizes)
    hit = reached.flatten()[content]
    ranks = rank[hit[order]].split(ids[hit].bincount(minlength=count).tolist())
    row_of = torch.full((count,), -1).scatter_(0, ids, content.nonzero().flatten() // length)
    per_row: list[list[tuple[int, ...]]] = [[] for _ in range(batch)]
    for item, row in enumerate(row_of.tolist()):  # ids ascend within a row, as its items were recorded
        per_row[row].append(tuple(ranks[item].tolist()))
    return per_row
