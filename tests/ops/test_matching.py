"""Bipartite matching and size-weighted merging against naive loops."""

from __future__ import annotations

import pytest
import torch

from vtr.methods.tome import merge_schedule
from vtr.ops.matching import MergeState, bipartite_matching, max_merges, merge_tokens


def _padded_state(sizes: list[list[float]], originals: int = 12) -> MergeState:
    """A state whose rows hold tokens of ``sizes`` (0 = padding) at slots 0, 2, 4, ..., and ``originals``
    original tokens spread over each row's valid tokens."""
    size = torch.tensor(sizes, dtype=torch.float32)
    batch, n = size.shape
    index = torch.arange(n).expand(batch, -1)
    slot = torch.where(size > 0, 2 * index, -1)
    lengths = (size > 0).sum(1)
    source = torch.arange(originals).expand(batch, -1) % lengths[:, None]
    return MergeState(size, slot, source, tuple(lengths.tolist()))


def _chosen(merged: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A (B, Na) merge mask as merge_tokens takes it: per row the merging candidates first (in any order),
    then the others, and the count of merging ones."""
    return merged.sort(dim=1, descending=True, stable=True).indices, merged.sum(1).tolist()


def _naive_merge(x, state, merged, matching):
    """Per row, a loop over tokens: survivors in order, each the size-weighted mean of its members."""
    rows = []
    for b in range(x.shape[0]):
        n = int((state.size[b] > 0).sum())
        into = list(range(n))
        for j, a in enumerate(range(matching.first, n, 2)):
            if merged[b, j]:
                into[a] = 2 * int(matching.partner[b, j]) + 1
        survivors = [t for t in range(n) if into[t] == t]
        values, sizes = [], []
        for t in survivors:
            members = [m for m in range(n) if into[m] == t]
            weights = [float(state.size[b, m]) for m in members]
            values.append(sum(w * x[b, m] for w, m in zip(weights, members)) / sum(weights))
            sizes.append(sum(weights))
        source = [survivors.index(into[int(state.source[b, o])]) for o in range(state.source.shape[1])]
        rows.append((torch.stack(values), sizes, [int(state.slot[b, t]) for t in survivors], source))
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_merged_tokens_are_size_weighted_means_in_order(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, 5, generator=generator)
    state = _padded_state([[1, 3, 2, 1, 4, 1, 2, 5, 1], [2, 1, 1, 3, 1, 2, 1, 0, 0]])
    matching = bipartite_matching(torch.randn(2, 9, 3, generator=generator), state)
    eligible = matching.similarity > float("-inf")
    merged = eligible & (torch.rand(eligible.shape, generator=generator) < 0.7)
    new_x, new_state = merge_tokens(x, state, matching, *_chosen(merged))
    for b, (values, sizes, slots, source) in enumerate(_naive_merge(x, state, merged, matching)):
        n = len(sizes)
        torch.testing.assert_close(new_x[b, :n], values, rtol=1e-6, atol=1e-6)
        assert new_state.size[b, :n].tolist() == sizes and new_state.slot[b, :n].tolist() == slots
        assert slots == sorted(slots)  # order is preserved
        assert new_state.source[b].tolist() == source
        assert not new_state.size[b, n:].any() and not new_x[b, n:].any()  # padding: size 0, zero rows
        assert new_state.lengths[b] == n
    assert new_x.shape[1] == max(new_state.lengths)


def test_a_batch_merging_the_same_count_per_row_needs_no_padding():
    """ToMe: every row loses r tokens, so the merged batch has no padding and no masks are built."""
    generator = torch.Generator().manual_seed(0)
    x, state = torch.randn(3, 9, 5, generator=generator), _padded_state([[1] * 9] * 3)
    matching = bipartite_matching(torch.randn(3, 9, 3, generator=generator), state)
    new_x, new_state = merge_tokens(x, state, matching, matching.ranked(3), [3, 3, 3])
    assert new_state.lengths == (6, 6, 6) and not new_state.padded and new_x.shape == (3, 6, 5)
    merged = torch.zeros(3, 4, dtype=torch.bool).scatter_(1, matching.ranked(3), True)
    for b, (values, sizes, slots, source) in enumerate(_naive_merge(x, state, merged, matching)):
        torch.testing.assert_close(new_x[b], values, rtol=1e-6, atol=1e-6)
        assert new_state.size[b].tolist() == sizes and new_state.slot[b].tolist() == slots
        assert new_state.source[b].tolist() == source


def test_values_are_the_references_arithmetic_and_size_one_tokens_stay_exact():
    """Every token of a merging row becomes sum(x * size) / sum(size) in float32, as the ToMe reference
    computes it (so a token of size 3 that receives nothing is x * 3 / 3); a token of size 1 stays exact."""
    x = torch.randn(1, 7, 4) * 1e3
    state = _padded_state([[1, 3, 7, 1, 1, 1, 1]])
    partner = torch.tensor([[0, 1, 2, 2]])  # B indices: token 2 (candidate 1) into token 3
    matching = bipartite_matching(torch.randn(1, 7, 2), state, protected=0)
    matching = type(matching)(matching.similarity, partner, first=0)
    new_x, new_state = merge_tokens(x, state, matching, torch.tensor([[1]]), [1])
    size = state.size[0, :, None]
    expected = (x[0] * size)[[0, 1, 3, 4, 5, 6]] / size[[0, 1, 3, 4, 5, 6]]
    expected[2] = (x[0, 3] * 1 + x[0, 2] * 7) / 8
    assert torch.equal(new_x[0], expected)
    assert torch.equal(new_x[0, [0, 3, 4, 5]], x[0, [0, 4, 5, 6]])  # size 1, received nothing
    assert new_state.size[0].tolist() == [1, 3, 8, 1, 1, 1]
    assert new_state.source[0].tolist() == [0, 1, 2, 2, 3, 4, 5, 0, 1, 2, 2, 3]


def test_a_row_merging_nothing_in_a_batch_keeps_its_exact_values():
    """DyMU rows merge different counts; a row merging none skips the layer when alone, so in a batch too."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 4, generator=generator) * 1e3
    state = _padded_state([[3, 1, 7, 1, 5, 1, 3, 1, 1]] * 2)
    matching = bipartite_matching(torch.randn(2, 9, 3, generator=generator), state)
    new_x, new_state = merge_tokens(x, state, matching, matching.ranked(2), [2, 0])
    assert new_state.lengths == (7, 9) and torch.equal(new_x[1], x[1])
    assert new_state.size[1].tolist() == state.size[1].tolist()
    assert new_state.source[1].tolist() == state.source[1].tolist()


def test_matching_never_merges_the_class_token_or_into_padding():
    metric = torch.ones(2, 7, 3)  # everything equally similar
    state = _padded_state([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    matching = bipartite_matching(metric, state)
    assert matching.first == 2  # the class token (index 0) is no candidate
    assert (matching.similarity > float("-inf")).tolist() == [[True, True, True], [True, True, False]]
    assert matching.partner[1, :2].tolist() == [0, 0]  # ties pick the lowest B index, a valid one
    unit = torch.nn.functional.normalize(torch.randn(1, 7, 3), dim=-1)
    matching = bipartite_matching(unit, _padded_state([[1] * 7]))
    expected = (unit[0, 2::2] @ unit[0, 1::2].T).max(-1)
    torch.testing.assert_close(matching.similarity[0], expected.values)
    assert matching.partner[0].tolist() == expected.indices.tolist()


def test_ranked_takes_the_most_similar_candidates_lower_index_first_on_ties():
    state = _padded_state([[1] * 8])
    matching = bipartite_matching(torch.randn(1, 8, 3), state, protected=0)
    matching = type(matching)(torch.tensor([[0.9, 0.1, 0.8, 0.8]]), matching.partner, first=0)
    assert matching.ranked(3).tolist() == [[0, 2, 3]]


@pytest.mark.parametrize("tokens, remove, layers", [(65, 44, 2), (577, 512, 23), (65, 10, 2), (65, 48, 2), (9, 0, 3)])
def test_merge_schedule_removes_exactly_what_is_asked(tokens, remove, layers):
    schedule = merge_schedule(tokens, remove, layers)
    assert sum(schedule) == remove and len(schedule) == layers
    for r in schedule:
        assert r <= max_merges(tokens)
        tokens -= r
    assert max(schedule, default=0) - min(schedule, default=0) <= max(1, remove // layers)


def test_merge_schedule_refuses_the_unreachable():
    with pytest.raises(ValueError, match="at most 48 of 65"):
        merge_schedule(65, 49, 2)


def test_without_a_class_token_every_a_token_may_merge():
    """SigLIP: no protected token, so A token 0 is eligible and ToMe's cap is half of all tokens."""
    state = _padded_state([[1] * 7])
    matching = bipartite_matching(torch.ones(1, 7, 3), state, protected=0)
    assert matching.first == 0 and (matching.similarity > float("-inf")).tolist() == [[True, True, True, True]]
    assert (max_merges(7, protected=0), max_merges(8, protected=0), max_merges(8)) == (3, 4, 3)
    schedule = merge_schedule(16, 12, 3, protected=0)  # 16 -> 8 -> 4 -> 2 at most
    assert sum(schedule) == 12 and schedule[0] <= 8


def _reference_capped(similarity: torch.Tensor, passed: torch.Tensor, tokens: int, protected: int) -> list[bool]:
    """The reference's threshold path for one row, written out: r = number of A tokens above the threshold,
    capped at (t - protected) // 2; the r A tokens of highest similarity merge."""
    r = min(int(passed.sum()), (tokens - protected) // 2)
    ranked = sorted(range(similarity.numel()), key=lambda a: (-float(similarity[a]) if passed[a] else float("inf"), a))
    chosen = set(ranked[:r])
    return [a in chosen for a in range(similarity.numel())]


def _merged_set(flags: list[bool]) -> list[int]:
    return [a for a, flag in enumerate(flags) if flag]


@pytest.mark.parametrize("tokens, protected", [(9, 0), (729, 0), (8, 0), (577, 1), (7, 1)])
def test_merges_are_capped_at_half_the_unprotected_tokens_like_the_reference(tokens, protected):
    """An odd sequence without a class token (SigLIP, 729) has (t + 1) / 2 A tokens; when all of them pass
    the threshold the reference merges only (t - protected) // 2 of them, leaving the least similar."""
    generator = torch.Generator().manual_seed(tokens)
    state = _padded_state([[1] * tokens])
    matching = bipartite_matching(torch.randn(1, tokens, 4, generator=generator), state, protected)
    passed = matching.similarity > -2.0  # every candidate passes
    cap = state.caps(protected)[0]
    chosen = matching.ranked(min(int(passed.sum()), cap))[0]
    expected = _reference_capped(matching.similarity[0], passed[0], tokens, protected)
    assert sorted(chosen.tolist()) == _merged_set(expected)
    assert cap == (tokens - protected) // 2
    if tokens % 2 and not protected:  # the one merge more than the cap that the threshold asked for
        assert int(passed.sum()) == cap + 1


def test_the_cap_is_per_row_in_a_padded_batch():
    state = _padded_state([[1] * 9, [1] * 5 + [0] * 4])
    assert state.caps(protected=0) == (4, 2)
    matching = bipartite_matching(torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(0)), state, 0)
    for row, tokens in enumerate((9, 5)):
        passed = matching.similarity[row] > float("-inf")
        assert int(passed.sum()) == (tokens + 1) // 2  # padding candidates may not merge
        chosen = matching.ranked(state.caps(0)[row])[row]
        assert sorted(chosen.tolist()) == _merged_set(_reference_capped(matching.similarity[row], passed, tokens, 0))
