"""DivPrune's greedy max-min loop as one Triton launch: the CUDA path of ``vtr.ops.maxmin``.

The torch loop dispatches three ops per pick (argmax, row fetch, running minimum), so a 32-frame video
kept at 10% (k = 627) costs about 1900 kernel launches, each doing microseconds of work. Here one
program per batch row holds the running minimum of its N tokens in registers and makes all k picks in
one launch: per pick, an argmax over the registers, one row load of the distance matrix, a minimum.

Same picks as the torch loop, bit for bit: the running minimum is the same float32 values (a minimum
is exact), the diagonal trick is the caller's (picked tokens' minimum is ``-inf``), and ``tl.argmax``
breaks ties to the left like ``torch.argmax``. Lanes past N hold ``-inf`` and sit right of every real
token, so they never win. ``tests/ops/test_maxmin_triton.py`` runs the kernel under ``TRITON_INTERPRET=1`` (set
before Triton's first import, in a fresh process) against the torch loop on CPU.

The kernel (``vtr.ops.maxmin_kernel``, which imports Triton) is jitted on first use, not at import:
``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, and vtr must import without Triton.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

MAX_TOKENS = 1 << 15
"""Longest row the kernel keeps in registers (a 160-frame OneVision video); longer rows use the torch loop."""


def serves(distance: Tensor) -> bool:
    """Whether the kernel takes ``distance``: on CUDA, Triton installed, rows short enough for registers."""
    return distance.is_cuda and distance.shape[-1] <= MAX_TOKENS and _have_triton()


@functools.cache
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernel():
    """The jitted kernel (``triton.jit`` decorates for the interpreter when ``TRITON_INTERPRET=1``)."""
    import triton

    from vtr.ops import maxmin_kernel

    return triton.jit(maxmin_kernel.greedy_maxmin_rows)


def greedy_maxmin_triton(distance: Tensor, first: Tensor, k: int) -> Tensor:
    """(B, k) greedy max-min picks, starting from ``first`` (B,), on ``distance`` (B, N, N) whose diagonal
    is ``-inf``; one launch for the whole batch."""
    import triton

    batch, n, _ = distance.shape
    distance = distance if distance.stride(-1) == 1 else distance.contiguous()
    picks = torch.empty(batch, k, dtype=torch.long, device=distance.device)
    block = triton.next_power_of_2(n)
    _kernel()[(batch,)](
        distance, first.contiguous(), picks, n, k, distance.stride(1), distance.stride(0), BLOCK=block,
        num_warps=min(16, max(4, block // 512)))
    return picks
