"""Model-family adapters; all model knowledge lives here."""

from __future__ import annotations

import inspect

import torch

from vtr.adapters.base import Adapter
from vtr.adapters.llava import LlavaAdapter, LlavaNextAdapter
from vtr.adapters.qwen_vl import QwenVLAdapter
from vtr.errors import UnsupportedModelError

ADAPTERS: dict[str, type[Adapter]] = {t: cls for cls in (LlavaAdapter, LlavaNextAdapter, QwenVLAdapter) for t in cls.model_types}


def supported_models() -> list[str]:
    """``config.model_type`` values vtr can wrap."""
    return sorted(ADAPTERS)


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter for ``model``, or ``UnsupportedModelError`` naming the type and what is supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"vtr has no adapter for model_type={model_type!r} ({type(model).__name__}); supported: "
            f"{', '.join(supported_models())}. Load the model with its *ForConditionalGeneration class."
        )
    if not hasattr(model, "generate") or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is the bare backbone of {model_type!r}; wrap the *ForConditionalGeneration "
            f"model (the one with generate() and lm_head)"
        )
    if "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        import transformers

        raise UnsupportedModelError(
            f"vtr needs transformers >= 5.18 (forward(mm_encoder_outputs=...)); this is transformers "
            f"{transformers.__version__}: pip install -U 'transformers>=5.18'"
        )
    return ADAPTERS[model_type](model)


__all__ = ["Adapter", "adapter_for", "supported_models"]
