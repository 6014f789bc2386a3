"""The KV cache a model call carries, under either of its transformers names, and the caches an in-LLM
stage can shrink."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

from transformers import DynamicCache
from transformers.cache_utils import LinearAttentionCacheLayerMixin
from transformers.generation.configuration_utils import ALL_STATIC_CACHE_IMPLEMENTATIONS

from vtr.errors import ReductionError

# transformers 5.24 renamed the keyword from ``past_key_values`` (5.23 and before) to ``cache``
CACHE_KEYWORDS = ("cache", "past_key_values")
# preallocated caches, one length for every layer (``paged``: continuous batching's block cache)
FIXED_LENGTH_CACHES = (*ALL_STATIC_CACHE_IMPLEMENTATIONS, "paged")


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The cache object in a forward's / decoder layer's keyword arguments, or ``None``."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def holds_nothing(cache: Any, layer: int) -> bool:
    """Whether ``cache`` holds nothing yet for decoder ``layer`` (a full pass fills it). A linear-attention
    layer (Qwen3.5's GatedDeltaNet) keeps a recurrent state, not per-token keys: empty until its first pass."""
    layers = getattr(cache, "layers", ())
    entry = layers[layer] if layer < len(layers) else None
    if isinstance(entry, LinearAttentionCacheLayerMixin):
        return not any(entry.has_previous_state.values())
    return cache.get_seq_length(layer) == 0


class FullPasses:
    """Tells, per decoder layer call, whether it belongs to a full pass (prefill, or a step of an uncached
    generate: the layer's cache holds nothing yet) or to a cached step.

    ``cache_layers``: per layer, the layer whose cache it reads (default: its own). A KV-sharing layer (Gemma 4)
    holds no cache of its own: it runs in the pass of the layer before it, so it takes the answer last given."""

    def __init__(self, cache_layers: Sequence[int], num_layers: int) -> None:
        self.source = tuple(cache_layers) or tuple(range(num_layers))
        self._last = False

    def __call__(self, kwargs: dict[str, Any], layer: int) -> bool:
        if self.source[layer] != layer:
            return self._last
        cache = passed_cache(kwargs)
        self._last = cache is None or holds_nothing(cache, layer)
        return self._last


@functools.cache
def cache_keyword() -> str:
    """The keyword the installed transformers' model forwards take the cache under: ``cache`` from 5.24
    (``past_key_values`` still works there, with a FutureWarning), ``past_key_values`` before. For manual
    decoding loops: ``model(input_ids=..., **{cache_keyword(): cache})``."""
    from transformers import GenerationMixin

    return "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
        else "past_key_values"


def fixed_length_cache_error(what: str) -> ReductionError:
    return ReductionError(
        f"in-LLM methods need transformers' dynamic KV cache (layers from K on cache fewer tokens), got {what}; do "
        f"not pass cache_implementation='static' or a preallocated cache (leave the cache to generate(), or pass "
        f"a DynamicCache)"
    )


def check_shrinkable_cache(kwargs: dict[str, Any], generation_config: Any = None) -> None:
    """Before a reduced call with an in-LLM stage: refuse a cache whose layers cannot hold different lengths,
    asked for by ``cache_implementation`` (the call's, its ``generation_config``'s or the model's default
    ``generation_config``) or passed in, before transformers allocates or fills anything."""
    config = kwargs.get("generation_config") or generation_config
    implementation = kwargs.get("cache_implementation") or getattr(config, "cache_implementation", None)
    if implementation in FIXED_LENGTH_CACHES:
        raise fixed_length_cache_error(f"cache_implementation={implementation!r}")
    cache = passed_cache(kwargs)
    if cache is not None and not isinstance(cache, DynamicCache):
        raise fixed_length_cache_error(f"a {type(cache).__name__}")
