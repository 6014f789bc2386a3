"""vtr: training-free visual-token reduction for Hugging Face multimodal LLMs.

    import vtr
    vtr.wrap(model, method="divprune", budget=64)   # same object, patched in place, reversible
    model.generate(**inputs)                        # unchanged API, fewer visual tokens
    vtr.stats(model); vtr.unwrap(model)

The names below, and the submodule ``vtr.assets`` (``vtr.assets.tiny_llava_synth()``), are imported on
first use (PEP 562), so ``import vtr`` (and the ``vtr`` command's start-up) does not pay for torch and
transformers until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SOURCES = {
    "Budget": "vtr.budget",
    "ReductionError": "vtr.errors",
    "UnsupportedModelError": "vtr.errors",
    "VideoDecodeError": "vtr.errors",
    "available_methods": "vtr.methods",
    "is_wrapped": "vtr.api",
    "reduced": "vtr.api",
    "show": "vtr.show",
    "show_call": "vtr.show",
    "stats": "vtr.api",
    "supported_models": "vtr.adapters",
    "unwrap": "vtr.api",
    "wrap": "vtr.api",
}

__all__ = sorted(_SOURCES)
_SUBMODULES = ("assets",)  # reachable as attributes after a plain ``import vtr``

if TYPE_CHECKING:
    from vtr.adapters import supported_models
    from vtr.api import is_wrapped, reduced, stats, unwrap, wrap
    from vtr.budget import Budget
    from vtr.errors import ReductionError, UnsupportedModelError, VideoDecodeError
    from vtr.methods import available_methods
    from vtr.show import show, show_call


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"vtr.{name}")
    if name not in _SOURCES:
        raise AttributeError(f"module 'vtr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``vtr.stats`` the function: importing the submodule ``vtr/stats.py`` (which the API does) would
    otherwise bind the module under the same name and hide the lazily imported function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
