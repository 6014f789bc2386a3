"""Reduction methods and their registry (name -> configured dataclass)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from vtr.methods.base import BudgetedMethod, KeepAll, Method, Reduction, Stage, VisualItem
from vtr.methods.divprune import DivPrune
from vtr.methods.dymu import DyMU
from vtr.methods.fastv import FastV
from vtr.methods.hiprune import HiPrune
from vtr.methods.holitom import HoliTom
from vtr.methods.holitom_inner import HoliTomInner
from vtr.methods.layer import LayerMethod
from vtr.methods.pdrop import PDrop
from vtr.methods.pooling import Pool
from vtr.methods.random import RandomSelect
from vtr.methods.tome import ToMe
from vtr.methods.vision import VisionMethod
from vtr.methods.visionzip import VisionZip

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls for cls in (KeepAll, DivPrune, RandomSelect, Pool, HiPrune, VisionZip, HoliTom, FastV, PDrop,
                              HoliTomInner, ToMe, DyMU)
}


def available_methods() -> list[str]:
    """Names accepted by ``vtr.wrap(model, method=...)``."""
    return sorted(REGISTRY)


def takes_budget(name: str) -> bool:
    """Whether the registered method ``name`` takes a budget (DyMU's token count follows its thresholds)."""
    return "budget" in _options_of(_registered(name))


def _options_of(cls: type[Method]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


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
    cls = _registered(method)
    fields = _options_of(cls)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"method {method!r} has no option(s) {unknown}; its options are {sorted(fields - {'budget'})}"
        )
    if budget is None and cls.budget_required:
        raise ValueError(
            f"method {method!r} needs a budget: an int (tokens kept per image/video) or a float in (0, 1]"
        )
    if budget is not None:
        if "budget" not in fields:
            raise ValueError(f"method {method!r} does not take a budget")
        options["budget"] = budget
    return cls(**options)


def make_methods(method: str | Method | Sequence[str | Method], budget: Any = None, **options: Any) -> list[Method]:
    """One method, or a list of methods to compose (one per stage).

    In a list, ``budget`` goes to every named method that takes one and each option to every named
    method that has it; an option no listed method has is an error. Give methods that need different
    budgets as configured objects (``vtr.methods.DivPrune(budget=256)``).
    """
    if isinstance(method, (str, Method)):
        return [make_method(method, budget, **options)]
    if not isinstance(method, (list, tuple)):
        raise ValueError(f"method must be a method name ({', '.join(available_methods())}), a method object or a "
                         f"list of them, got {method!r}; e.g. method='divprune'")
    entries = list(method)
    if not entries:
        raise ValueError("method=[] names no method; pass a method name, object, or a non-empty list")
    named = {entry: _options_of(_registered(entry)) for entry in entries if isinstance(entry, str)}
    unused = sorted(set(options) - set().union(*named.values()))
    if unused:
        raise ValueError(f"no method in {entries} has the option(s) {unused}")
    return [
        entry if isinstance(entry, Method) else make_method(
            entry, budget if "budget" in named[entry] else None,
            **{k: v for k, v in options.items() if k in named[entry]})
        for entry in entries
    ]


def _registered(name: Any) -> type[Method]:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return REGISTRY[name]


__all__ = [
    "BudgetedMethod",
    "DivPrune",
    "DyMU",
    "FastV",
    "HiPrune",
    "HoliTom",
    "HoliTomInner",
    "KeepAll",
    "LayerMethod",
    "Method",
    "PDrop",
    "Pool",
    "RandomSelect",
    "Reduction",
    "Stage",
    "ToMe",
    "VisionMethod",
    "VisionZip",
    "VisualItem",
    "available_methods",
    "make_method",
    "make_methods",
    "takes_budget",
]
