"""Group kernels against naive loops."""

from __future__ import annotations

import pytest
import torch

from vtr.ops.groups import fold_into_nearest, rank_in_group, topk_per_group


def test_rank_in_group_matches_sorting_each_group():
    group = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    key = torch.tensor([5.0, 1.0, 5.0, 0.0, -1.0, 3.0, 0.0])
    ranks = rank_in_group(group, key)
    for g in group.unique():
        members = (group == g).nonzero().flatten().tolist()
        expected = sorted(members, key=lambda i: (float(key[i]), i))  # ties: lower index first
        assert [int(ranks[i]) for i in expected] == list(range(len(members)))


@pytest.mark.parametrize("seed", range(5))
def test_topk_per_group_matches_a_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    group = torch.randint(-1, 4, (3, 20), generator=generator)
    scores = torch.randint(0, 5, (3, 20), generator=generator).float()  # many ties on purpose
    k = [0, 1, 3, 50]
    keep = topk_per_group(scores, group, k)
    expected = torch.zeros_like(keep)
    flat_g, flat_s = group.flatten(), scores.flatten()
    for g in range(4):
        members = [i for i in range(flat_g.numel()) if flat_g[i] == g]
        for i in sorted(members, key=lambda i: (-float(flat_s[i]), i))[: k[g]]:
            expected.view(-1)[i] = True
    assert torch.equal(keep, expected)
    assert torch.equal(topk_per_group(scores, group, k, others=True), expected | (group < 0))


def _fold_reference(hidden, kept, group):
    """The HoliTom reference's loop: similarities first, then in-place pairwise halving in source order."""
    out = hidden.clone()
    for b in range(hidden.shape[0]):
        unit = torch.nn.functional.normalize(hidden[b].float(), dim=-1)
        for s in range(hidden.shape[1]):
            if group[b, s] < 0 or kept[b, s]:
                continue
            candidates = [d for d in range(hidden.shape[1]) if kept[b, d] and group[b, d] == group[b, s]]
            sims = torch.stack([unit[s] @ unit[d] for d in candidates])
            d = candidates[int(sims.argmax())]
            out[b, d] = (out[b, d] + hidden[b, s]) / 2
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fold_into_nearest_equals_sequential_halving(seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 16, 8, generator=generator, dtype=torch.float64)
    group = torch.randint(-1, 3, (2, 16), generator=generator)
    kept = torch.rand(2, 16, generator=generator) < 0.4
    for g in range(3):  # every group keeps at least one member
        for b in range(2):
            members = (group[b] == g).nonzero().flatten()
            if members.numel():
                kept[b, members[0]] = True
    got = fold_into_nearest(hidden, kept, group)
    assert torch.allclose(got, _fold_reference(hidden, kept, group), atol=1e-6)
    assert torch.equal(got[~kept], hidden[~kept])


def test_fold_with_nothing_dropped_is_identity():
    hidden = torch.randn(1, 5, 4)
    group = torch.tensor([[-1, 0, 0, 1, -1]])
    assert fold_into_nearest(hidden, group >= 0, group) is hidden
