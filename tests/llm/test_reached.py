"""The visual tokens reaching the last decoder layer, per item, as ``vtr.stats`` records them."""

from __future__ import annotations

import torch

from vtr.llm.reached import reached_last_layer


def test_survivors_become_token_indices_per_item():
    # row 0: item 0 at columns 1-3, item 1 at 5-6; row 1: item 2 at columns 2-5; column 7 of row 0 is generated
    item = torch.tensor([[-1, 0, 0, 0, -1, 1, 1, -1], [-1, -1, 2, 2, 2, 2, -1, -1]])
    final = torch.tensor([[0, 2, 3, 5, 7, 8], [1, 2, 5, 6, -1, -1]])
    assert reached_last_layer(final, item, step=1) == [[(1, 2), (0,)], [(0, 3)]]
    beams = final.repeat_interleave(2, dim=0)  # two beams per row: the first speaks for the row
    assert reached_last_layer(beams, item, step=2) == [[(1, 2), (0,)], [(0, 3)]]
