"""Vision-encoder attention of LLaVA-OneVision and LLaVA-NeXT-Video *videos*, mapped to their LLM tokens.

Every frame is one CLIP/SigLIP sequence; its scores (and mean keys) over the patches are pooled exactly
as the model pools the frame's features into video tokens, with the model's own pooling code applied
to the attention maps: OneVision's bilinear resize to ceil(h/2) x ceil(w/2) (``apply_pooling``),
LLaVA-NeXT-Video's average or max pooler (``vision_resampler``; its ``"conv"`` mode has no attention
counterpart and is refused). HoliTom pools its attention the same way (``reference/holitom-dymu.md`` 1.1).
OneVision's one trailing ``image_newline`` per video is structural: it gets a zero entry so the scores
stay aligned with every placeholder slot of the item, as the engine expects.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from vtr.errors import ReductionError
from vtr.adapters.llava_attention import encoder_attention
from vtr.methods.base import AttentionRequest
from vtr.vision.attention import AttentionCapture


def _pool(model: torch.nn.Module, values: Tensor) -> Tensor:
    """(frames, patches, C) -> (frames, video tokens, C), pooled by the model's own video pooling."""
    base = model.model
    if hasattr(base, "apply_pooling"):  # LLaVA-OneVision
        return base.apply_pooling(values)
    resampler = base.vision_resampler  # LLaVA-NeXT-Video
    if not isinstance(resampler.pool, (torch.nn.AvgPool2d, torch.nn.MaxPool2d)):
        raise ReductionError(
            f"LLaVA-NeXT-Video's {type(resampler.pool).__name__} video pooler has no counterpart for attention "
            f"scores; vision attention is mapped for spatial_pool_mode 'average' or 'max' only"
        )
    return resampler(values)


def video_attention(model: torch.nn.Module, attention_module: Callable[[int], torch.nn.Module],
                    capture: AttentionCapture, requests: dict[str, AttentionRequest], inputs: dict[str, Any],
                    drop_cls: int) -> list[dict[str, tuple[Tensor, Tensor]]]:
    """Per video, per request name: (scores, mean keys) aligned with the video's placeholder slots."""
    videos = inputs["pixel_values_videos"].shape[0]
    newline = 1 if hasattr(model.model, "apply_pooling") else 0
    per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in range(videos)]
    for name, request in requests.items():
        frame_scores, frame_keys = encoder_attention(attention_module, capture, request, drop_cls)
        with torch.no_grad():
            scores = _pool(model, frame_scores.unsqueeze(-1)).squeeze(-1)
            keys = _pool(model, frame_keys)
        scores = torch.nn.functional.pad(scores.reshape(videos, -1), (0, newline))
        keys = torch.nn.functional.pad(keys.reshape(videos, -1, keys.shape[-1]), (0, 0, 0, newline))
        for item, item_scores, item_keys in zip(per_item, scores, keys):
            item[name] = (item_scores, item_keys)
    return per_item
