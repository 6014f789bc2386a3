"""Packing kept columns of a batch to the left: the layout every reduced sequence takes."""

from __future__ import annotations

import torch
from torch import Tensor


def left_packed_index(keep: Tensor) -> Tensor:
    """(B, L') source column of every reduced column, rows left-padded with -1 to the longest row.

    A stable sort of each row's keep flags puts its dropped columns first and its kept ones, in order,
    last: the last L' columns of that order are the packed row (one sort, one host read for L')."""
    if keep.numel() == 0:
        return torch.full((keep.shape[0], 0), -1, dtype=torch.long, device=keep.device)
    packed, order = keep.sort(dim=1, stable=True)
    start = keep.shape[1] - int(packed.sum(1).max())
    return order[:, start:].masked_fill(~packed[:, start:], -1)
