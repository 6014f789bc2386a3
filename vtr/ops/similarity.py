"""Similarity kernels."""

from __future__ import annotations

import torch
from torch import Tensor


def cosine_distance(x: Tensor) -> Tensor:
    """Pairwise cosine distance ``1 - cos(x_i, x_j)`` of the rows of ``x``: ``(N, D)`` -> ``(N, N)``, or
    batched ``(B, N, D)`` -> ``(B, N, N)``.

    Computed in float32 whatever the input dtype: in fp16 the self-distance of a row is not 0 but up to
    +-1e-3, which is enough to let an already selected token win a later max-min step. A zero row has no
    direction; it gets distance 1 to everything (instead of NaN) so that it is simply "far".
    """
    x = x.float()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    # 1 - S fused into the matmul: one N x N allocation instead of two (on a 32-frame video each is 157 MB
    # and costs about as long as the matmul itself); the same float32 values as 1 - (unit @ unit^T)
    product = torch.addmm if unit.dim() == 2 else torch.baddbmm
    return product(torch.ones((), device=unit.device), unit, unit.transpose(-1, -2), alpha=-1)
