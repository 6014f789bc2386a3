from __future__ import annotations

import math

import pytest

from vtr.budget import Budget


@pytest.mark.parametrize("value,n,expected", [(64, 576, 64), (1000, 576, 576), (0.25, 576, 144), (1.0, 576, 576),
                                              (0.098, 576, 56), (0.001, 100, 1)])
def test_tokens_for(value, n, expected):
    assert Budget(value).tokens_for(n) == expected


# fractional parts >= .5, where floor and round disagree; expected counts worked out by hand (round half to
# even, as Python's round: 2.5 -> 2, 3.5 -> 4, 7.5 -> 8), never from Budget itself
@pytest.mark.parametrize("value,n,expected", [(0.1, 576, 58), (0.15, 64, 10), (0.7, 5, 4), (2 / 3, 100, 67),
                                              (0.5, 7, 4), (0.75, 10, 8), (0.25, 10, 2), (0.5, 5, 2), (0.9, 1, 1)])
def test_fractions_round_to_the_nearest_count(value, n, expected):
    assert Budget(value).tokens_for(n) == expected


@pytest.mark.parametrize("bad", [0, -3, 0.0, -0.5, 1.5, math.nan, "64", None, True])
def test_bad_budgets_name_the_fix(bad):
    with pytest.raises(ValueError, match=r"budget|fraction"):
        Budget(bad)


def test_str_distinguishes_one_token_from_everything():
    assert str(Budget(1)) != str(Budget(1.0))
