"""The registry of family costs (``vtr.adapters.COSTS``) and what it refuses."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlavaConfig

import vtr
from vtr.adapters import ADAPTERS, COSTS, adapter_class, family_costs


def test_every_supported_model_type_can_be_costed():
    """A family is not added until the FLOPs model can price it."""
    assert sorted(COSTS) == sorted(ADAPTERS)
    assert all(model_type in COSTS[model_type].model_types for model_type in COSTS)


def test_unsupported_configs_are_refused_by_name():
    supported = ", ".join(sorted(ADAPTERS))
    with pytest.raises(ValueError, match=rf"no FLOPs model for 'llama'; supported: {supported}$"):
        family_costs(LlamaConfig())
    with pytest.raises(ValueError, match=r"'pixtral' vision tower; supported: clip_vision_model, siglip_vision_model"):
        family_costs(LlavaConfig(vision_config={"model_type": "pixtral"}))
    with pytest.raises(vtr.UnsupportedModelError, match=rf"model_type='llama'.*supported: {supported}"):
        adapter_class(LlamaConfig())
    assert adapter_class(LlavaConfig()) is ADAPTERS["llava"]
