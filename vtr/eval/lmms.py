"""Registration with lmms-eval: the manifests behind vtr's ``lmms_eval.models`` entry point.

``pyproject.toml`` declares ``[project.entry-points."lmms_eval.models"] vtr = "vtr.eval.lmms:manifests"``;
lmms-eval calls ``manifests()`` when ``lmms_eval.models`` is first imported, so ``--model vtr_llava_hf``
works once vtr is installed. Class paths are strings: a family's module (and the lmms-eval class it
subclasses) is imported only when a run asks for it. This module itself imports nothing from lmms-eval
at import time, so importing it before ``lmms_eval.models`` cannot leave a half-initialised entry point.
"""

from __future__ import annotations

_PACKAGE = "vtr.eval.models"

# model id -> (simple class path, chat class path), None where lmms-eval has no such variant
CLASS_PATHS: dict[str, tuple[str | None, str | None]] = {
    "vtr_llava_hf": (f"{_PACKAGE}.llava_hf.VtrLlavaHf", f"{_PACKAGE}.llava_hf.VtrLlavaHfChat"),
    "vtr_qwen2_vl": (f"{_PACKAGE}.qwen2_vl.VtrQwen2VL", None),
    "vtr_qwen2_5_vl": (f"{_PACKAGE}.qwen2_5_vl.VtrQwen2_5_VL", f"{_PACKAGE}.qwen2_5_vl.VtrQwen2_5_VLChat"),
    "vtr_qwen3_vl": (f"{_PACKAGE}.qwen3_vl.VtrQwen3VL", f"{_PACKAGE}.qwen3_vl.VtrQwen3VLChat"),
    "vtr_qwen3_5": (f"{_PACKAGE}.qwen3_5.VtrQwen3_5", f"{_PACKAGE}.qwen3_5.VtrQwen3_5Chat"),
    "vtr_internvl_hf": (None, f"{_PACKAGE}.internvl_hf.VtrInternVLHfChat"),
    "vtr_gemma3": (f"{_PACKAGE}.gemma3.VtrGemma3", None),
    "vtr_gemma4": (f"{_PACKAGE}.gemma4.VtrGemma4", None),
}
MODEL_IDS: tuple[str, ...] = tuple(CLASS_PATHS)


def manifests() -> list:
    """One ``ModelManifest`` per vtr model id (lmms-eval prefers the chat class; ``--force_simple`` picks simple)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, simple_class_path=simple, chat_class_path=chat)
            for model_id, (simple, chat) in CLASS_PATHS.items()]
