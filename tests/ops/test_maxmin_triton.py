"""The single-launch Triton selector picks exactly the torch loop's tokens, run on CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect when set before Triton's first import (``tl.argmax`` and the
other library kernels are decorated then), so the kernel runs in a fresh interpreter process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from vtr.ops.maxmin import greedy_maxmin
from vtr.ops.similarity import cosine_distance

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

CASES = [(50, 12), (37, 37)]  # 37: the block is padded past N; k = N: every token

KERNEL_RUN = """
import json, sys, torch
from vtr.ops.maxmin import first_maxmin_pick
from vtr.ops.maxmin_triton import greedy_maxmin_triton
from vtr.ops.similarity import cosine_distance
out = []
for features, k in zip(torch.load(sys.argv[1]), json.loads(sys.argv[2])):
    distance = cosine_distance(features)
    first = first_maxmin_pick(distance)
    distance.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)
    out.append(greedy_maxmin_triton(distance, first, k).tolist())
print(json.dumps(out))
"""


def _features(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    base = torch.randn(2, n - 6, 8, generator=g)
    return torch.cat([base, base[:, :6]], dim=1)  # duplicated rows: exact ties, to the lowest index


def test_kernel_picks_the_torch_loops_tokens(tmp_path):
    features = [_features(n) for n, _ in CASES]
    torch.save(features, tmp_path / "features.pt")
    ks = [k for _, k in CASES]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", KERNEL_RUN, str(tmp_path / "features.pt"), json.dumps(ks)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for picks, x, k in zip(got, features, ks):
        assert picks == greedy_maxmin(cosine_distance(x), k).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatch_takes_the_kernel_and_picks_the_cpu_tokens():
    """On CUDA ``greedy_maxmin`` is the single launch (no per-pick ops) and picks what the CPU loop picks on
    the same distances, at the 32-frame video size."""
    from vtr.measure.overhead import OpCounter

    distance = cosine_distance(_features(6272).cuda())
    expected = greedy_maxmin(distance.cpu(), 627)  # the same float32 distances, on the CPU loop
    with OpCounter() as counter:
        got = greedy_maxmin(distance, 627)
    assert counter.ops["aten.argmax.default"] == 1  # the first pick only
    assert torch.equal(got.cpu(), expected)
