"""Reduction methods and their registry (name -> configured dataclass)."""

from __future__ import annotations

import dataclasses
from typing import Any

from vtr.methods.base import BudgetedMethod, Method, Reduction, Stage, VisualItem
from vtr.methods.divprune import DivPrune
from vtr.methods.pooling import Pool
from vtr.methods.random import RandomSelect

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (DivPrune, RandomSelect, Pool)}


def available_methods() -> list[str]:
    """Names accepted by ``vtr.wrap(model, method=...)``."""
    return sorted(REGISTRY)


def make_method(method: str | Method, budget: Any = None, **options: Any) -> Method:
    """Build a configured method from a registered name (or pass a method object through).

    Unknown names and options raise ``ValueError`` listing what is accepted.
    """
    if isinstance(method, Method):
        if budget is not None or options:
            raise ValueError(
                f"{method.describe()} is already configured; pass budget/options to its constructor, "
                f"or pass the method by name"
            )
        return method
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    cls = REGISTRY[method]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"method {method!r} has no option(s) {unknown}; its options are {sorted(fields - {'budget'})}"
        )
    if issubclass(cls, BudgetedMethod):
        if budget is None:
            raise ValueError(
                f"method {method!r} needs a budget: an int (tokens kept per image/video) or a float in (0, 1]"
            )
        options["budget"] = budget
    elif budget is not None:
        raise ValueError(f"method {method!r} does not take a budget")
    return cls(**options)


__all__ = [
    "BudgetedMethod",
    "DivPrune",
    "Method",
    "Pool",
    "RandomSelect",
    "Reduction",
    "Stage",
    "VisualItem",
    "available_methods",
    "make_method",
]
