"""Packing kept columns of a batch: to the left (the layout every reduced prompt takes) or to the front
(merged encoder sequences, whose padding trails)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor


class Packed(NamedTuple):
    index: Tensor  # (B, L') source column of every reduced column, -1 on the pad slots
    valid: Tensor  # (B, L') False on the pad slots
    lengths: list[int]  # columns each row kept

    @property
    def full(self) -> bool:
        """Every row kept as many columns as the longest: no pad slots at all."""
        return min(self.lengths, default=0) == max(self.lengths, default=0)


def left_packed(keep: Tensor) -> Packed:
    """Each row's kept columns, in order, left-padded with pad slots to the longest row.

    A stable sort of each row's keep flags puts its dropped columns first and its kept ones, in order,
    last: the last L' columns of that order are the packed row. One sort and one host read (the row
    lengths, which set L' and say whether any row is short)."""
    if keep.numel() == 0:
        empty = torch.zeros((keep.shape[0], 0), dtype=torch.long, device=keep.device)
        return Packed(empty, empty.bool(), [0] * keep.shape[0])
    packed, order = keep.sort(dim=1, stable=True)
    lengths = packed.sum(1).tolist()
    start = keep.shape[1] - max(lengths)
    valid = packed[:, start:]
    rows = Packed(order[:, start:], valid, lengths)
    return rows if rows.full else rows._replace(index=rows.index.masked_fill(~valid, -1))


def front_packed(keep: Tensor, lengths: Sequence[int]) -> tuple[Tensor, Tensor | None]:
    """Each row's kept columns, in order, at the front, padded at the end to the longest row, when the
    caller already knows ``lengths`` (kept columns per row): then no host read is needed.

    One stable sort (kept first). Returns the source column of every packed column, where pad slots point
    at dropped columns (gathers through it stay in range), and the valid mask, None when no row is short."""
    longest = max(lengths)
    flags, order = keep.sort(dim=1, descending=True, stable=True)
    return order[:, :longest], (flags[:, :longest] if min(lengths) < longest else None)
