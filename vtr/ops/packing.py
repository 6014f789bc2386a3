"""Packing kept columns of a batch to the left: the layout every reduced sequence takes."""

from __future__ import annotations

import torch
from torch import Tensor


def left_packed_index(keep: Tensor) -> Tensor:
    """(B, L') source column of every reduced column, rows left-padded with -1 to the longest row."""
    counts = keep.sum(1)
    width = int(counts.max()) if keep.numel() else 0
    dest = (width - counts).unsqueeze(1) + keep.long().cumsum(1) - 1
    rows, cols = keep.nonzero(as_tuple=True)
    index = torch.full((keep.shape[0], width), -1, dtype=torch.long, device=keep.device)
    index[rows, dest[rows, cols]] = cols
    return index
