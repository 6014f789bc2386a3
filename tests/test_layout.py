"""The visual-input description: newline patterns, segments, and the newline keep rule."""

from __future__ import annotations

import pytest
import torch

from vtr.layout import ItemLayout, Segment, layout_with_newlines, square_grid


def _newlines(n, slots):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[slots] = True
    return mask


def test_anyres_pattern_base_then_rows_closed_by_newlines():
    # base 4x4 = 16 tokens, then 4 rows of 6 crop tokens each followed by a newline (LLaVA-NeXT, 40x32 image)
    layout = layout_with_newlines(_newlines(44, [22, 29, 36, 43]))
    assert layout.segments == (Segment(0, (1, 4, 4)), Segment(16, (1, 4, 6)))
    assert layout.structural.tolist() == [22, 29, 36, 43]
    assert layout.closes.tolist() == [[16, 22], [22, 28], [28, 34], [34, 40]]
    assert layout.content.tolist() == list(range(22)) + list(range(23, 29)) + list(range(30, 36)) + list(range(37, 43))
    layout.check(44)


def test_trailing_newline_closes_a_whole_video():
    layout = layout_with_newlines(_newlines(17, [16]), frames=4)  # OneVision: 4 frames of 2x2, one newline
    assert layout.segments == (Segment(0, (4, 2, 2)),)
    assert layout.closes.tolist() == [[0, 16]]


def test_no_newline_is_a_plain_grid():
    layout = layout_with_newlines(_newlines(16, []), frames=4)
    assert layout.segments == (Segment(0, (4, 2, 2)),) and layout.structural.numel() == 0


def test_unrecognised_pattern_is_refused():
    with pytest.raises(ValueError, match="unrecognised newline pattern"):
        layout_with_newlines(_newlines(20, [5, 9, 19]))


def test_newline_kept_iff_its_row_keeps_a_token():
    layout = layout_with_newlines(_newlines(44, [22, 29, 36, 43]))
    content_kept = torch.zeros(40, dtype=torch.bool)
    content_kept[[0, 17, 35]] = True  # a base token, one token in crop row 0, one in row 3
    assert layout.structural_kept(content_kept).tolist() == [True, False, False, True]


def test_square_grid_and_check():
    assert square_grid(576) == (1, 24, 24) and square_grid(16, frames=4) == (4, 2, 2) and square_grid(6) == (1, 1, 6)
    with pytest.raises(ValueError, match="does not tile"):
        ItemLayout.grid_only((1, 2, 3), torch.device("cpu")).check(7)
