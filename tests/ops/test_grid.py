from __future__ import annotations

import pytest
import torch

from vtr.ops.grid import group_first_member, group_mean, grid_partition, pooled_grid


def test_partition_covers_every_token_once_in_raster_boxes():
    assignment = grid_partition((1, 5, 7), (1, 2, 3), torch.device("cpu"))
    assert assignment.shape == (35,)
    assert sorted(set(assignment.tolist())) == list(range(6))
    grid = assignment.view(5, 7)
    assert grid[0, 0] == 0 and grid[-1, -1] == 5
    # boxes are rectangles: each box's tokens span exactly (its rows) x (its columns)
    for box in range(6):
        rows, cols = (grid == box).nonzero(as_tuple=True)
        assert rows.unique().numel() * cols.unique().numel() == rows.numel()
    # row bins of sizes 2/3 and column bins of sizes 2/2/3: boxes are 4 to 9 tokens
    assert sorted(set(torch.bincount(assignment).tolist())) == [4, 6, 9]


def test_group_mean_and_first_member_are_exact():
    x = torch.arange(12.0).view(6, 2)
    assignment = torch.tensor([1, 1, 0, 2, 0, 2])
    assert torch.equal(group_mean(x, assignment, 3), torch.tensor([[6.0, 7.0], [1.0, 2.0], [8.0, 9.0]]))
    assert group_first_member(assignment, 3).tolist() == [2, 0, 3]


@pytest.mark.parametrize(
    "grid,budget,expected",
    [((1, 24, 24), 64, (1, 8, 8)), ((1, 24, 24), 128, (1, 11, 11)), ((1, 6, 8), 12, (1, 3, 4)),
     ((4, 6, 8), 24, (4, 2, 3)), ((4, 6, 8), 2, (2, 1, 1)), ((1, 1, 10), 3, (1, 1, 3))],
)
def test_pooled_grid_is_the_largest_fitting_box_grid(grid, budget, expected):
    out = pooled_grid(grid, budget)
    assert out == expected
    assert out[0] * out[1] * out[2] <= budget
