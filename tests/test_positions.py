"""PPE's per-chunk positions (vtr.positions) on hand-built reductions."""

from __future__ import annotations

import pytest
import torch

from vtr.errors import ReductionError
from vtr.positions import ChunkPositions, PositionScheme, chunk_members, position_distance

# the PPE reference's golden case (select_pos_topk): 12 tokens in 3 clusters
ASSIGNMENT = torch.tensor([0, 1, 0, 2, 0, 1, 0, 0, 2, 0, 0, 1])


def test_highest_rule_takes_the_highest_indices_descending_and_cycles():
    # the released code's result for k=4: [[10, 9, 7, 6], [11, 5, 1, 11], [8, 3, 8, 3]]
    members = chunk_members(ASSIGNMENT, 3, 4, distance=None)
    assert members.tolist() == [[10, 9, 7, 6], [11, 5, 1, 11], [8, 3, 8, 3]]


def test_nearest_rule_orders_members_by_distance_with_ties_to_the_lower_index():
    distance = torch.tensor([5.0, 2.0, 1.0, 0.5, 3.0, 1.0, 1.0, 0.0, 0.5, 9.0, 4.0, 2.0])
    members = chunk_members(ASSIGNMENT, 3, 8, distance)
    # cluster 0 = {0, 2, 4, 6, 7, 9, 10}: distances 5, 1, 3, 1, 0, 9, 4 -> 7, 2, 6 (tie: lower index), 4, 10, 0, 9
    assert members[0].tolist() == [7, 2, 6, 4, 10, 0, 9, 7]
    # cluster 1 = {1, 5, 11}: 2, 1, 2 -> 5, 1, 11 (tie), cycled
    assert members[1].tolist() == [5, 1, 11, 5, 1, 11, 5, 1]
    # cluster 2 = {3, 8}: tie at 0.5 -> 3, 8
    assert members[2].tolist() == [3, 8, 3, 8, 3, 8, 3, 8]


def test_dropped_tokens_are_never_members_and_singletons_fill_every_chunk():
    assignment = torch.tensor([-1, 0, -1, 1, 1])
    members = chunk_members(assignment, 2, 3, distance=None)
    assert members.tolist() == [[1, 1, 1], [4, 3, 4]]


def test_an_output_token_without_members_is_a_clear_error():
    with pytest.raises(ReductionError, match="without any member"):
        chunk_members(torch.tensor([0, 0, 2]), 3, 4, distance=None)


def test_position_proxy_is_the_distance_to_the_members_mean_position():
    # (t, h, w) of 4 tokens; tokens 0..2 form one merged token centred at (0, 1, 1)
    positions = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 5], [0, 1, 2, 5]])
    distance = position_distance(positions, torch.tensor([0, 0, 0, 1]), 2)
    assert distance.tolist() == [2.0, 0.0, 2.0, 0.0]


def test_table_holds_the_chosen_members_positions_at_the_output_tokens_columns():
    # one row: text 0..2, a 2x3 image grid at columns 3..8 (M-RoPE t/h/w), text after
    t = torch.tensor([0, 1, 2, 3, 3, 3, 3, 3, 3, 6])
    h = torch.tensor([0, 1, 2, 3, 3, 3, 4, 4, 4, 6])
    w = torch.tensor([0, 1, 2, 3, 4, 5, 3, 4, 5, 6])
    rope = torch.stack([t, h, w]).unsqueeze(1)  # (3, 1, 10)
    assignment = torch.tensor([0, 0, 1, 0, 0, 1])  # left 2x2 box -> token in slot 0, right column -> slot 2
    kept = torch.tensor([0, 2])
    columns = torch.arange(3, 9)
    for rule, expected_members in [("highest", [[4, 3, 1, 0], [5, 2, 5, 2]]), ("nearest", [[0, 1, 3, 4], [2, 5, 2, 5]])]:
        table = ChunkPositions(rope, PositionScheme("ppe", 4, rule))
        centre = None
        if rule == "nearest":  # features: token 0 is the box mean's nearest, then 1, 3, 4; column: 2 then 5
            features = torch.tensor([[0.0], [0.1], [9.0], [0.2], [0.3], [9.5]])
            centre = (features, torch.tensor([[0.0], [9.0]]))
        table.add(0, columns, kept, assignment, centre)
        for out, slot in enumerate(kept.tolist()):
            members = columns[torch.tensor(expected_members[out])]
            assert torch.equal(table.table[:, 0, columns[slot]], rope[:, 0, members])
        untouched = torch.tensor([0, 1, 2, 4, 6, 7, 8, 9])  # text and the merged-away slots keep their own position
        assert torch.equal(table.table[:, 0, untouched], rope[:, 0, untouched].unsqueeze(-1).expand(-1, -1, 4))


def test_gathered_follows_the_reduced_columns_with_zero_on_padding():
    rope = torch.arange(6).view(1, 1, 6)
    table = ChunkPositions(rope, PositionScheme("ppe", 2))
    gathered = table.gathered(torch.tensor([[-1, 1, 4]]))
    assert gathered.tolist() == [[[[0, 0], [1, 1], [4, 4]]]]


def test_scheme_options_are_validated():
    assert PositionScheme.make("ppe") == PositionScheme("ppe", 8, "nearest")
    assert PositionScheme.make("ppe", 4, "highest") == PositionScheme("ppe", 4, "highest")
    assert PositionScheme.make(PositionScheme("ppe", 4, "highest"), chunks=2) == PositionScheme("ppe", 2, "highest")
    with pytest.raises(ValueError, match="only apply with positions='ppe'"):
        PositionScheme.make("original", chunks=4)
    with pytest.raises(ValueError, match="ppe_chunks must be a positive int"):
        PositionScheme.make("ppe", chunks=0)
    with pytest.raises(ValueError, match="ppe_members must be one of"):
        PositionScheme.make("ppe", members="farthest")
    with pytest.raises(ValueError, match="positions must be one of"):
        PositionScheme.make("gapless")
