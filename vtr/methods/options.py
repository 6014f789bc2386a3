"""Method options checked from their dataclass fields, when the method object is built.

A method's options are the fields of its dataclass. The field's type hint says what an option accepts
(``int``, ``float``, ``bool``, ``Literal[...]`` choices, ``tuple[int, ...]``, ``X | None``, ...) and
``option(...)`` adds what a hint cannot say: a numeric range, and a converter (``budget`` becomes a
``Budget``). ``Method`` runs ``check_options`` before every method's own ``__post_init__``, so a bad
value fails where it is passed (``vtr.wrap``, or the method's constructor), never on a later call, and
no method writes its own type checks. Checks between options (ToMe's ``r`` xor ``budget``) and against
the model (decoder or encoder depth, at ``wrap``) stay with the method.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

_RANGE = "vtr_range"
_CONVERT = "vtr_convert"
SEED = dict(low=0, high=2**24 - 1)  # seeded methods mix the seed with item ranks into a 64-bit generator seed


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``None`` = unbounded), each end included unless ``*_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def option(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, convert: Callable[[Any], Any] | None = None) -> Any:
    """A method option (a dataclass field) with a numeric range (for a sequence, of each element), or a
    converter that checks and converts any value but ``None`` itself (``Budget``: its errors say more than a
    type hint could)."""
    metadata: dict[str, Any] = {}
    if low is not None or high is not None:
        metadata[_RANGE] = Range(low, high, low_open, high_open)
    if convert is not None:
        metadata[_CONVERT] = convert
    return dataclasses.field(default=default, metadata=metadata)


def check_options(method: Any) -> None:
    """Check every init option of the dataclass ``method`` against its hint and range; convert it where the
    field asks. Raises ``ValueError`` naming the method, the option, what it accepts and an example."""
    hints = _hints(type(method))
    for f in dataclasses.fields(method):
        if not f.init:
            continue
        value, hint = getattr(method, f.name), hints[f.name]
        convert = f.metadata.get(_CONVERT)
        if convert is not None and value is not None:  # the converter knows its type best: its errors say more
            object.__setattr__(method, f.name, convert(value))
            continue
        valid_range: Range | None = f.metadata.get(_RANGE)
        members = value if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
        in_range = valid_range is None or all(
            not isinstance(v, numbers.Real) or isinstance(v, bool) or v in valid_range for v in members)
        if not (_accepts(value, hint) and in_range):
            raise ValueError(_message(method, f, value, hint, valid_range))


def checking_options(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """``post_init`` preceded by ``check_options`` (once per object: only the class's own hook checks, not
    the parents' hooks it calls through ``super()``)."""

    @functools.wraps(post_init)
    def run(self: Any) -> None:
        if type(self).__post_init__ is run:
            check_options(self)
        post_init(self)

    run.checks_options = True  # type: ignore[attr-defined]
    return run


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:  # an int is a float option's value too, NaN never is
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    if origin in (tuple, Sequence):
        element = args[0] if args else Any
        return (isinstance(value, Sequence) and not isinstance(value, (str, bytes))
                and all(_accepts(v, element) for v in value))
    if hint is Any:
        return True
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"vtr cannot check options of type {hint!r}; give the field a plainer hint")


def _described(hint: Any, plural: bool = False) -> str:
    """What ``hint`` accepts in words (``None`` left out: the message says "or None" once)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_described(arm, plural) for arm in args if arm is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in (tuple, Sequence):
        return f"a list of {_described(args[0] if args else Any, plural=True)}"
    names = {bool: ("True or False", "bools"), int: ("an int", "ints"), float: ("a number (not NaN)", "numbers"),
             str: ("a str", "strs"), Any: ("anything", "values")}
    if hint in names:
        return names[hint][plural]
    if getattr(hint, "__name__", "") == "PathLike":
        return "paths" if plural else "a path"
    return f"{hint.__name__}s" if plural else f"a {hint.__name__}"


def _message(method: Any, f: dataclasses.Field, value: Any, hint: Any, valid_range: Range | None) -> str:
    expected = _described(hint) + ("" if valid_range is None else f" {valid_range}")
    if _accepts(None, hint):
        expected += " (or None)"
    shown = f"{value!r} ({type(value).__name__})"
    if f.default is None:
        fix = f"pass {f.name}=<{_described(hint)}>, or leave it out for the default"
    elif f.default is dataclasses.MISSING:
        fix = f"pass {f.name}=<{_described(hint)}>"
    else:
        fix = f"e.g. {f.name}={f.default!r} (the default)"
    return f"{method.name} {f.name} must be {expected}, got {shown}; {fix}"
