"""The contract of a family's costs: what the analytical FLOPs model (``vtr.measure.flops``) asks a
model family about one call, from the config alone (a real checkpoint's config can price a call its
narrow shape proxy ran).

A family's costs read the call's visual inputs off the processor outputs, cost its vision tower and
projector (merger, pooler) per visual input, describe its decoder (``vtr.costs.decoder``; the default
reads the text config) and answer what methods' costs ask of the tower (``vtr.methods.cost.VisionCosts``).
Each family implements it next to its adapter (``llava_costs.py``, ``qwen_vl_costs.py``) and lists its
classes in ``vtr.adapters.COSTS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor
from transformers import PreTrainedConfig

from vtr.costs.counting import VisualInput
from vtr.costs.decoder import Decoder, decoder_from_config
from vtr.methods.base import AttentionRequest, VisionInfo
from vtr.methods.vision import EncoderGeometry


class FamilyCosts:
    """FLOPs knowledge of one model type, built from its config (``check`` refuses what it cannot cost)."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PreTrainedConfig) -> None:
        self.config = config
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a configuration this model cannot cost (default: every one is fine)."""

    # ------------------------------------------------------------------ the call's visual inputs
    def items(self, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:  # pragma: no cover - per family
        """Every ``modality`` input of the batch, in the order the model scatters them (row-major)."""
        raise NotImplementedError

    def placeholder_units(self, items: list[VisualInput], hits: Tensor) -> tuple[list[int], list[int]]:
        """(units of each item, units in each row) that assign the items to rows in order, from ``hits``
        (B, L), the rows' placeholder tokens. Default: an item is one run of consecutive placeholders."""
        starts = hits.clone()
        starts[:, 1:] &= ~hits[:, :-1]
        return [1] * len(items), starts.sum(1).tolist()

    # ------------------------------------------------------------------ the vision side
    def vision_flops(self, item: VisualInput) -> float:  # pragma: no cover - per family
        """The vision encoder's FLOPs for one image or video."""
        raise NotImplementedError

    def projector_flops(self, item: VisualInput) -> float:  # pragma: no cover - per family
        """The projector's (merger's, pooler's) FLOPs for one image or video."""
        raise NotImplementedError

    def decoder(self) -> Decoder:
        """The LLM's decoder layers (default: as the text config describes them)."""
        return decoder_from_config(self.config.get_text_config())

    # ------------------------------------------------------------------ what methods' costs ask (VisionCosts)
    def vision_info(self) -> VisionInfo:  # pragma: no cover - per family
        raise NotImplementedError

    def attention_flops(self, request: AttentionRequest, item: VisualInput) -> float:  # pragma: no cover
        raise NotImplementedError

    def vision_head_dim(self) -> int:  # pragma: no cover - per family
        raise NotImplementedError

    def part_sizes(self, item: VisualInput, content: int, per_frame: bool) -> list[int]:
        """A video splits into its frames (or stays whole), an image stays whole (default)."""
        if item.modality == "video" and per_frame:
            return [content // item.frames] * item.frames
        return [content]

    def merge_geometry(self, tokens: int) -> EncoderGeometry:
        raise ValueError(f"no vision-encoder merging on {self.config.model_type} models, so nothing to cost")
