"""Density-peak clustering with k nearest neighbours (DPC-KNN) and the centre-weighted merge HoliTom uses.

Exact spec: ``reference/holitom-dymu.md`` 1.5. Distances are Euclidean over sqrt(D); a token's density is
``exp(-mean of its k smallest squared distances)`` (itself included); its peak distance is the distance
to the nearest token of strictly higher density (the largest distance of the matrix when none is
denser); the ``c`` tokens with the highest density x peak distance are the centres. The reference adds
``1e-6 * U(0, 1)`` noise from the global RNG to the densities; here there is none unless asked for
(``noise``), so equal densities fall to the lowest index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtr.ops.grid import top_indices


def scaled_distances(x: Tensor) -> Tensor:
    """(n, D) -> (n, n) float32 Euclidean distances / sqrt(D), one matmul, exact zero diagonal.

    Centring first (distances do not change) keeps the ``|a|^2 + |b|^2 - 2ab`` form accurate when the
    tokens share a large common component, as projected features do.
    """
    x = x.float()
    x = x - x.mean(-2, keepdim=True)
    squares = (x * x).sum(-1)
    d2 = squares.unsqueeze(-1) + squares.unsqueeze(-2) - 2 * (x @ x.transpose(-1, -2))
    d2 = d2.clamp_min(0)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2.sqrt() / math.sqrt(x.shape[-1])


def dpc_knn_centres(distances: Tensor, c: int, k: int, noise: Tensor | None = None) -> Tensor:
    """Indices (ascending) of the ``c`` density peaks among n tokens, from their (n, n) ``distances``.

    ``k``: neighbours of the density (itself included, capped at n). ``noise``: (n,) added to the
    densities (the reference adds ``1e-6 * U(0, 1)``); ties in the final score keep the lowest index.
    """
    n = distances.shape[-1]
    if not 1 <= c <= n:
        raise ValueError(f"DPC-KNN needs 1 <= c <= n tokens, got c={c} for n={n}")
    nearest = distances.topk(min(k, n), dim=-1, largest=False).values
    density = torch.exp(-(nearest ** 2).mean(-1))
    if noise is not None:
        density = density + noise.to(density.device, density.dtype)
    denser = density.unsqueeze(0) > density.unsqueeze(1)  # [i, j]: j is denser than i
    peak = distances.masked_fill(~denser, float("inf")).amin(-1)
    peak = torch.where(denser.any(-1), peak, distances.max())
    return top_indices(peak * density, c).sort().values


def nearest_centre(distances: Tensor, centres: Tensor) -> Tensor:
    """(n,) cluster of every token: its nearest centre (ties to the lowest centre), each centre its own."""
    cluster = distances[:, centres].argmin(-1)
    cluster[centres] = torch.arange(centres.numel(), device=centres.device)
    return cluster


def centre_weights(cluster: Tensor, centres: Tensor, beta: float) -> Tensor:
    """(n,) weight of each token in its cluster's merged token ``beta * x_centre + (1 - beta) * mean(others)``
    (the centre alone, weight 1, when nobody joined it); the weights of one cluster sum to 1."""
    sizes = torch.bincount(cluster, minlength=centres.numel())
    others = (sizes - 1)[cluster]
    weights = (1 - beta) / others.clamp_min(1).double()
    is_centre = torch.zeros_like(cluster, dtype=torch.bool)
    is_centre[centres] = True
    alone = (sizes == 1)[cluster]
    return torch.where(is_centre, torch.where(alone, 1.0, beta), weights).float()
