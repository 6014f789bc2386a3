"""The Triton source of the single-launch greedy max-min selector (jitted by ``vtr.ops.maxmin_triton``).

Its own module because Triton resolves ``tl`` from the kernel's module globals, and only this module
may import Triton at the top (vtr imports without it).
"""

import triton.language as tl


def greedy_maxmin_rows(distance, first, picks, n, k, row_stride, batch_stride, BLOCK: tl.constexpr):
    """One program per batch row: k greedy max-min picks over the (N, N) matrix at ``distance``, diagonal
    ``-inf``, from the pick ``first[row]``; the running minimum of the N tokens stays in registers."""
    row = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    inside = lanes < n
    matrix = distance + row.to(tl.int64) * batch_stride
    pick = tl.load(first + row).to(tl.int64)
    tl.store(picks + row * k, pick)
    running = tl.full((BLOCK,), float("inf"), tl.float32)
    for step in range(1, k):  # fold in the last pick's row, then pick the farthest token
        nearest = tl.load(matrix + pick * row_stride + lanes, mask=inside, other=-float("inf"))
        running = tl.minimum(running, nearest)
        pick = tl.argmax(running, axis=0, tie_break_left=True).to(tl.int64)
        tl.store(picks + row * k + step, pick)
