"""The KV cache a model call carries, under either of its transformers names."""

from __future__ import annotations

from typing import Any

# transformers 5.24 renamed the keyword from ``past_key_values`` (5.23 and before) to ``cache``
CACHE_KEYWORDS = ("cache", "past_key_values")


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The cache object in a forward's / decoder layer's keyword arguments, or ``None``."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None
