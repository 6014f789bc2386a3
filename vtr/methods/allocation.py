"""GlobalCom2-style budget allocation over AnyRes crops: the base image (thumbnail) decides each crop's share.

The base image and the unpadded crops grid of a LLaVA-NeXT / OneVision image both show the whole image
(``vtr.layout.Segment.crops``). A thumbnail token therefore lies over exactly one crop: the crop whose
box contains the packed-grid token at the same relative position as the thumbnail token's centre. A
crop's *mass* is the thumbnail's attention (CLS attention for CLIP, attention received for SigLIP, at
the feature layer) summed over the thumbnail tokens lying over it: the share of the model's global view
that falls on that crop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtr.layout import Segment


def crop_masses(base: Segment, crops: Segment, thumbnail_scores: Tensor) -> Tensor:
    """(crops,) thumbnail attention over each crop's region; ``thumbnail_scores`` (base.size,) in raster order."""
    device = thumbnail_scores.device
    _, h, w = base.grid
    _, rows, width = crops.grid
    crop_of = torch.empty(rows, width, dtype=torch.long, device=device)
    for index, (top, bottom, left, right) in enumerate(crops.crops):  # a handful of boxes
        crop_of[top:bottom, left:right] = index
    # centre of thumbnail row a is at (a + 0.5) / h of the image height: packed row floor((a + 0.5) * rows / h)
    y = ((2 * torch.arange(h, device=device) + 1) * rows) // (2 * h)
    x = ((2 * torch.arange(w, device=device) + 1) * width) // (2 * w)
    over = crop_of[y[:, None], x[None, :]].flatten()
    masses = torch.zeros(len(crops.crops), dtype=torch.float64, device=device)
    return masses.index_add_(0, over, thumbnail_scores.double())


def split_by_weight(k: int, sizes: list[int], weights: list[float]) -> list[int]:
    """Split ``k <= sum(sizes)`` tokens over parts in proportion to ``weights``, each part within
    [min(1, size), size] while ``k`` allows, summing to ``k`` exactly.

    While ``k`` covers one token per part, every part first gets one (no crop vanishes from the
    prompt); the rest is shared in proportion to the weights by water-filling (a part whose quota
    exceeds its room is filled, and its excess shared again among the others), and rounded by largest
    remainder (ties: the earlier part). All-zero weights share in proportion to the sizes.
    """
    if k > sum(sizes):
        raise ValueError(f"cannot keep {k} tokens of parts holding {sum(sizes)}")
    floor = [min(1, s) if k >= len(sizes) else 0 for s in sizes]
    room = [s - f for s, f in zip(sizes, floor)]
    left = k - sum(floor)
    weights = [w if w > 0 else 0.0 for w in weights]
    if sum(w for w, r in zip(weights, room) if r > 0) <= 0:
        weights = [float(s) for s in sizes]
    shares = [0] * len(sizes)  # on top of the floor
    while left > 0:
        active = [i for i in range(len(sizes)) if shares[i] < room[i] and weights[i] > 0]
        if not active:  # only weightless parts have room left: fill them by their room
            weights = [float(r - s) for r, s in zip(room, shares)]
            continue
        total = sum(weights[i] for i in active)
        quotas = {i: left * weights[i] / total for i in active}
        full = [i for i in active if quotas[i] >= room[i] - shares[i]]
        if full:  # water-filling: fill these, share what is left again
            for i in full:
                left, shares[i] = left - (room[i] - shares[i]), room[i]
            continue
        whole = {i: math.floor(quotas[i]) for i in active}
        rounded_up = sorted(active, key=lambda i: (whole[i] - quotas[i], i))[:left - sum(whole.values())]
        for i in active:
            shares[i] = whole[i] + (i in rounded_up)
        left = 0
    return [f + s for f, s in zip(floor, shares)]
