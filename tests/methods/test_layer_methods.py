"""In-LLM method cores: layers, keep counts, PDrop's equivalent-token budget, HoliTom's merge."""

from __future__ import annotations

import pytest
import torch

from vtr.errors import ReductionError
from vtr.methods import FastV, HoliTomInner, PDrop
from vtr.methods.layer import LayerInput, scaled_layer


def step(group: torch.Tensor, entry: list[int], stage: int = 0, num_layers: int = 32, hidden=None, scores=None):
    generator = torch.Generator().manual_seed(0)
    hidden = hidden if hidden is not None else torch.randn(*group.shape, 8, generator=generator)
    scores = scores if scores is not None else torch.rand(group.shape, generator=generator)
    current = torch.bincount(group[group >= 0], minlength=len(entry)).tolist()
    return LayerInput(hidden, scores, group, stage, tuple(entry), tuple(current), num_layers)


def test_default_layers_follow_the_papers_and_scale_with_depth():
    assert PDrop().prune_layers(32) == (8, 16, 24)
    assert PDrop().prune_layers(28) == (7, 14, 21)
    assert PDrop().prune_layers(4) == (1, 2, 3)
    assert HoliTomInner().prune_layers(28) == (18,)
    assert HoliTomInner().prune_layers(4) == (3,)
    assert FastV(budget=8).prune_layers(32) == (2,)
    assert scaled_layer(18, 28, 2) == 1  # never layer 0, never past the last layer


def test_fastv_keeps_the_budget_of_every_visual_input_by_score():
    group = torch.tensor([[-1, 0, 0, 0, 0, -1, 1, 1, 1]])
    scores = torch.tensor([[9.0, 0.1, 0.4, 0.3, 0.2, 9.0, 0.5, 0.7, 0.6]])
    keep = FastV(budget=2).select(step(group, [4, 3], scores=scores)).keep
    assert keep[group >= 0].tolist() == [False, True, True, False, False, True, True]
    keep = FastV(budget=0.5).select(step(group, [4, 3], scores=scores)).keep  # round(1.5) = 2 (half to even)
    assert int(keep[group == 0].sum()) == 2 and int(keep[group == 1].sum()) == 2


def test_pdrop_keeps_ratio_powers_of_the_entry_count():
    group = torch.zeros(1, 40, dtype=torch.long)
    method = PDrop(ratio=0.5)
    counts = [method.keep_counts(step(group[:, :n], [40], stage=s))[0] for s, n in ((0, 40), (1, 20), (2, 10))]
    assert counts == [20, 10, 5]


@pytest.mark.parametrize("budget,stages", [(64, (2, 8, 16)), (128, (2, 8, 16)), (0.3, (8, 16, 24))])
def test_pdrop_budget_sets_the_layer_averaged_token_count(budget, stages):
    n, layers = 576, 32
    method = PDrop(budget=budget, layers=stages)
    kept, current = [], n
    for stage in range(3):
        current = method.keep_counts(step(torch.zeros(1, current, dtype=torch.long), [n], stage=stage))[0]
        kept.append(current)
    spans = [b - a for a, b in zip((0, *stages), (*stages, layers))]
    average = (spans[0] * n + sum(s * k for s, k in zip(spans[1:], kept))) / layers
    target = budget if isinstance(budget, int) else round(budget * n)
    assert average == target  # met exactly (whole counts reach it here; tests/methods/test_pdrop.py covers gaps)


def test_pdrop_budget_below_the_first_stage_cost_is_an_error():
    with pytest.raises(ReductionError, match="earlier stage layers"):
        PDrop(budget=64).keep_counts(step(torch.zeros(1, 576, dtype=torch.long), [576]))


def test_holitom_inner_folds_dropped_tokens_into_kept_ones():
    group = torch.tensor([[-1, 0, 0, 0, 0]])
    hidden = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    scores = torch.tensor([[1.0, 0.9, 0.1, 0.8, 0.2]])
    out = HoliTomInner(budget=0.5).select(step(group, [4], hidden=hidden, scores=scores))
    assert out.keep[0, 1:].tolist() == [True, False, True, False]
    assert torch.allclose(out.hidden[0, 1], (hidden[0, 1] + hidden[0, 2]) / 2)
    assert torch.allclose(out.hidden[0, 3], (hidden[0, 3] + hidden[0, 4]) / 2)
    assert torch.equal(out.hidden[0, 0], hidden[0, 0])  # text untouched


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="query must be one of"):
        FastV(budget=4, query="first")
    with pytest.raises(ValueError, match="ratio"):
        PDrop(ratio=0.0)
    with pytest.raises(ValueError, match="ascending"):
        PDrop(layers=(16, 8)).check_layers(32)
