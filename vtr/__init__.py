"""vtr: training-free visual-token reduction for Hugging Face multimodal LLMs.

    import vtr
    vtr.wrap(model, method="divprune", budget=64)   # same object, patched in place, reversible
    model.generate(**inputs)                        # unchanged API, fewer visual tokens
    vtr.stats(model); vtr.unwrap(model)
"""

from vtr.adapters import supported_models
from vtr.api import is_wrapped, reduced, stats, unwrap, wrap
from vtr.budget import Budget
from vtr.errors import ReductionError, UnsupportedModelError, VideoDecodeError
from vtr.methods import available_methods

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import ``vtr.assets`` on first use, so ``vtr.assets.tiny_llava_synth()`` works after a plain
    ``import vtr`` without loading it (or anything else) at import time."""
    if name == "assets":
        import importlib

        return importlib.import_module("vtr.assets")
    raise AttributeError(f"module 'vtr' has no attribute {name!r}")


__all__ = [
    "Budget",
    "ReductionError",
    "UnsupportedModelError",
    "VideoDecodeError",
    "available_methods",
    "is_wrapped",
    "reduced",
    "stats",
    "supported_models",
    "unwrap",
    "wrap",
]
