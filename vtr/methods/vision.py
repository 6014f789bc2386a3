"""The protocol of methods that merge tokens inside the vision encoder (ToMe, DyMU).

The engine (``vtr.vision.merging``) runs the encoder with hooks that, after each merging layer, pair
every A token (even index) with its most similar B token (odd index) and ask the method's matcher how
many A tokens merge (always the most similar ones). The matcher is built once per encoder call, when the
token count is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Sequence

from torch import Tensor

from vtr.methods.base import Method, Stage
from vtr.methods.cost import SampleWork


@dataclass(frozen=True)
class EncoderGeometry:
    """What a matcher may know about one encoder call."""

    tokens: int  # tokens per encoder sequence entering layer 0 (class token included)
    features: int  # how many of them become LLM features (the model drops the class token)
    merge_layers: int  # merges follow layers 0 .. merge_layers - 1 (up to the feature layer)
    depth: int  # encoder layers
    protected: int = 1  # leading tokens that never merge: CLIP's class token (SigLIP: none)


class Matcher(Protocol):
    """Per-layer merge decisions of one encoder call."""

    def active(self, layer: int) -> bool:
        """Whether layer ``layer`` merges at all (an inactive layer skips the similarity computation)."""

    def merges(self, layer: int, similarity: Tensor) -> Sequence[int]:
        """Per row, how many A tokens merge into their best B partner after layer ``layer``: the most similar
        ones go. ``similarity`` (B, Na) is -inf where a token may not merge; the engine caps each count at
        half the row's unprotected tokens. A matcher that knows the counts without reading ``similarity``
        (ToMe's schedule) spares the host read."""


@dataclass(frozen=True)
class VisionMethod(Method):
    """Base of vision-encoder merging methods.

    ``vtu``: virtual token unmerging in the LLM (``vtr.llm.unmerge``): every decoder layer's attention
    runs as if each original patch were present at its own position, the rest of the layer on the
    merged tokens. Keyword-only, so that a method's own first option stays its first positional one.
    """

    stage: ClassVar[Stage] = Stage.VISION

    vtu: bool = field(default=False, kw_only=True)

    def matcher(self, geometry: EncoderGeometry) -> Matcher:  # pragma: no cover - interface
        raise NotImplementedError

    def own_flops(self, work: SampleWork) -> float:
        """The candidate-A x B key similarity after every merging layer whose matcher is active
        (``vtr.vision.merging``), at the token counts the encoder recorded (a flop counter books it under the
        vision tower)."""
        head_dim, total = work.vision.vision_head_dim(), 0.0
        for item in work.items:
            if not item.encoder_tokens:
                continue
            geometry = work.vision.merge_geometry(item.encoder_tokens[0])
            matcher = self.matcher(geometry)
            first = 2 * geometry.protected  # the A tokens from this index on are matched (not the class token)
            total += item.frames * sum(2.0 * math.ceil((n - first) / 2) * (n // 2) * head_dim
                                       for layer, n in enumerate(item.encoder_tokens[:geometry.merge_layers])
                                       if matcher.active(layer) and n >= 2 + geometry.protected)
        return total
