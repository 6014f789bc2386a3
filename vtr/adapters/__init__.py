"""Model-family adapters; all model knowledge lives here."""

from __future__ import annotations

import inspect

import torch

from transformers import PreTrainedConfig

from vtr.adapters.base import Adapter
from vtr.adapters.costs import FamilyCosts
from vtr.adapters.gemma3 import Gemma3Adapter
from vtr.adapters.gemma3_costs import Gemma3Costs
from vtr.adapters.gemma4 import Gemma4Adapter
from vtr.adapters.gemma4_costs import Gemma4Costs
from vtr.adapters.internvl import InternVLAdapter
from vtr.adapters.internvl_costs import InternVLCosts
from vtr.adapters.llava import LlavaAdapter, LlavaNextAdapter
from vtr.adapters.llava_costs import LlavaCosts, LlavaNextCosts, LlavaNextVideoCosts, LlavaOneVisionCosts
from vtr.adapters.qwen_vl import QwenVLAdapter
from vtr.adapters.qwen_vl_costs import Qwen2VLCosts, Qwen25VLCosts, Qwen35Costs, QwenVLCosts
from vtr.errors import UnsupportedModelError

ADAPTERS: dict[str, type[Adapter]] = {
    model_type: cls
    for cls in (LlavaAdapter, LlavaNextAdapter, QwenVLAdapter, InternVLAdapter, Gemma3Adapter, Gemma4Adapter)
    for model_type in cls.model_types
}
COSTS: dict[str, type[FamilyCosts]] = {
    model_type: cls
    for cls in (LlavaCosts, LlavaNextCosts, LlavaOneVisionCosts, LlavaNextVideoCosts, Qwen2VLCosts, Qwen25VLCosts,
                QwenVLCosts, Qwen35Costs, InternVLCosts, Gemma3Costs, Gemma4Costs)
    for model_type in cls.model_types
}


def supported_models() -> list[str]:
    """``config.model_type`` values vtr can wrap."""
    return sorted(ADAPTERS)


def support_matrix() -> list[dict[str, str]]:
    """One row per supported model type: its transformers class and which visual inputs vtr reduces.

    Read from the adapters and from each model class's own ``input_modalities``, so the README table
    (``vtr models --markdown``) cannot drift from the code. Several images per prompt work wherever
    images do: the engine reduces every image to its own budget.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    rows = []
    for model_type in supported_models():
        class_name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type]
        model_modalities = getattr(transformers, class_name).input_modalities
        modalities = set(model_modalities) & set(ADAPTERS[model_type].modalities_handled)
        image = "yes" if "image" in modalities else "-"
        video = "yes" if "video" in modalities else "-"
        if video == "-" and "video" in model_modalities and ADAPTERS[model_type].video_frames_as_images:
            video = "frames"  # the processor turns a video into frames the model takes as images
        rows.append({"model_type": model_type, "class": class_name, "image": image, "multi-image": image,
                     "video": video, "adapter": ADAPTERS[model_type].__name__})
    return rows


def support_matrix_markdown() -> str:
    rows = support_matrix()
    header = ["model_type", "class", "image", "multi-image", "video", "adapter"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(f"`{r[h]}`" if h in ("model_type", "class", "adapter") else r[h] for h in header) + " |"
              for r in rows]
    return "\n".join(lines)


def adapter_class(config: PreTrainedConfig) -> type[Adapter]:
    """The adapter class of ``config``'s model type, or ``UnsupportedModelError`` naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(f"vtr has no adapter for model_type={model_type!r}; supported: "
                                    f"{', '.join(supported_models())}")
    return ADAPTERS[model_type]


def family_costs(config: PreTrainedConfig) -> FamilyCosts:
    """The FLOPs knowledge of ``config``'s model type (``vtr.adapters.costs``); ``ValueError`` where none."""
    if config.model_type not in COSTS:
        raise ValueError(f"no FLOPs model for {config.model_type!r}; supported: {', '.join(sorted(COSTS))}")
    return COSTS[config.model_type](config)


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


__all__ = ["Adapter", "FamilyCosts", "adapter_class", "adapter_for", "family_costs", "support_matrix", "support_matrix_markdown", "supported_models"]
