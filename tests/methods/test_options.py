"""Every method option is checked from its dataclass field when the method object is built."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import ClassVar

import pytest

from vtr.methods import REGISTRY, BudgetedMethod, Reduction, Stage
from vtr.methods.options import _RANGE, option

# the fewest options each registered method needs to be built
NEEDED = {"tome": dict(r=1), "dymu": dict(thresholds=[0.5, 0.6])}
NOT_AN_OPTION_VALUE = object()  # no option of any method accepts a bare object
CASES = [(name, f.name) for name, cls in sorted(REGISTRY.items()) for f in dataclasses.fields(cls) if f.init]


def _build(name: str, **options):
    return REGISTRY[name](**{**NEEDED.get(name, {}), **options})


def test_every_method_builds_with_its_defaults():
    for name in REGISTRY:
        assert _build(name).name == name


@pytest.mark.parametrize("name,field", CASES)
def test_every_option_refuses_a_value_of_the_wrong_type(name, field):
    with pytest.raises(ValueError, match=rf"{field} must be .*got <object object"):
        _build(name, **{field: NOT_AN_OPTION_VALUE})


@pytest.mark.parametrize("name,field", [(n, f) for n, f in CASES if f != "budget"])
def test_the_message_names_the_method_the_option_and_a_fix(name, field):
    with pytest.raises(ValueError) as error:
        _build(name, **{field: NOT_AN_OPTION_VALUE})
    message = str(error.value)
    assert message.startswith(f"{name} {field} must be ")
    assert "e.g." in message or f"pass {field}=" in message


def _float_options():
    for name, cls in sorted(REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            arms = typing.get_args(hints[f.name]) or (hints[f.name],)
            if f.init and float in arms and f.name != "budget":
                yield name, f.name


@pytest.mark.parametrize("name,field", list(_float_options()))
def test_nan_is_refused_by_every_number_option(name, field):
    with pytest.raises(ValueError, match=rf"{name} {field} must be a number \(not NaN\)"):
        _build(name, **{field: math.nan})


def _outside(cls, f: dataclasses.Field) -> list[float]:
    """Values just outside a field's range (an open end: the end itself), whole numbers for an int option."""
    valid, hint = f.metadata[_RANGE], typing.get_type_hints(cls)[f.name]
    step = 1 if int in (typing.get_args(hint) or (hint,)) else 0.5
    values = []
    if valid.low is not None:
        values.append(valid.low if valid.low_open else valid.low - step)
    if valid.high is not None:
        values.append(valid.high if valid.high_open else valid.high + step)
    return values


RANGED = [(name, f.name, value) for name, cls in sorted(REGISTRY.items()) for f in dataclasses.fields(cls)
          if _RANGE in f.metadata for value in _outside(cls, f)]


@pytest.mark.parametrize("name,field,value", RANGED)
def test_every_range_is_enforced_at_both_ends(name, field, value):
    with pytest.raises(ValueError, match=rf"{name} {field} must be .*got {value!r}"):
        _build(name, **{field: value})


def test_ranges_cover_the_options_issue_22_found_unchecked():
    assert {(n, f) for n, f, _ in RANGED} >= {("hiprune", "alpha"), ("hiprune", "object_layer"), ("random", "seed"),
                                             ("fastv", "layer"), ("holitom_inner", "layer"), ("holitom", "beta")}


@pytest.mark.parametrize("options,message", [
    (dict(name="random", budget=8, seed="x"), "random seed must be an int in \\[0, 16777215\\], got 'x' \\(str\\); "
                                               "e.g. seed=0"),
    (dict(name="fastv", budget=0.5, layer="2"), "fastv layer must be an int >= 1, got '2' \\(str\\)"),
    (dict(name="fastv", budget=0.5, layer=2.0), "fastv layer must be an int >= 1, got 2.0 \\(float\\)"),
    (dict(name="hiprune", budget=8, alpha=-1), "hiprune alpha must be a number \\(not NaN\\) in \\[0, 1\\], got -1"),
    (dict(name="hiprune", budget=8, alpha=5.0), "hiprune alpha .* got 5.0"),
    (dict(name="divprune", budget=8, allocation="per_crop"), "allocation must be one of 'global', 'per_segment'"),
    (dict(name="fastv", budget=0.5, query="first"), "query must be one of 'last', 'text'"),
    (dict(name="pdrop", layers=(2, "3")), "pdrop layers must be a list of ints \\(or None\\), got \\(2, '3'\\)"),
    (dict(name="pdrop", layers="23"), "pdrop layers must be a list of ints"),
    (dict(name="tome", r=1.5), "tome r must be an int >= 0 \\(or None\\), got 1.5 .* leave it out for the default"),
    (dict(name="dymu", thresholds=[0.5, "x"]), "dymu thresholds must be a str or a path or a list of numbers"),
    (dict(name="dymu", thresholds=[0.5], vtu=1), "dymu vtu must be True or False, got 1 \\(int\\)"),
    (dict(name="holitom", k=True), "holitom k must be an int >= 1, got True"),
    (dict(name="random", budget=True), "budget must be an int .* got True"),
])
def test_the_options_issue_22_lists(options, message):
    with pytest.raises(ValueError, match=message):
        _build(options.pop("name"), **options)


def test_replace_checks_again_and_ints_are_numbers():
    method = _build("hiprune", budget=8, alpha=1)  # an int is a valid number
    assert method.alpha == 1
    with pytest.raises(ValueError, match="hiprune alpha"):
        dataclasses.replace(method, alpha=2.0)


@dataclass(frozen=True)
class _EveryOther(BudgetedMethod):
    """A user's own method: its options are checked like the shipped ones', with no code of its own."""

    name: ClassVar[str] = "every_other"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    stride: int = option(2, low=1)
    post_init_ran: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:  # runs after the checks: it sees only valid options
        assert isinstance(self.stride, int) and self.stride >= 1
        object.__setattr__(self, "post_init_ran", True)

    def select(self, item, k: int) -> Reduction:  # pragma: no cover - never reduced here
        raise NotImplementedError


def test_a_user_defined_method_gets_the_same_checks():
    assert _EveryOther(budget=4, stride=3).post_init_ran
    with pytest.raises(ValueError, match="every_other stride must be an int >= 1, got 0"):
        _EveryOther(budget=4, stride=0)
    with pytest.raises(ValueError, match="every_other allocation must be one of"):
        _EveryOther(budget=4, allocation="crops")
