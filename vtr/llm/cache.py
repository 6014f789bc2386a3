"""The KV cache a model call carries, under either of its transformers names."""

from __future__ import annotations

import functools
import inspect
from typing import Any

# transformers 5.24 renamed the keyword from ``past_key_values`` (5.23 and before) to ``cache``
CACHE_KEYWORDS = ("cache", "past_key_values")


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The cache object in a forward's / decoder layer's keyword arguments, or ``None``."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


@functools.cache
def cache_keyword() -> str:
    """The keyword the installed transformers' model forwards take the cache under: ``cache`` from 5.24
    (``past_key_values`` still works there, with a FutureWarning), ``past_key_values`` before. For manual
    decoding loops: ``model(input_ids=..., **{cache_keyword(): cache})``."""
    from transformers import GenerationMixin

    return "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
        else "past_key_values"
