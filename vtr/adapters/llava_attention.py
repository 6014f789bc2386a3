"""Vision-encoder attention of LLaVA-NeXT / OneVision / NeXT-Video AnyRes images, on the packed token grid.

The encoder runs the base image and every AnyRes crop as separate sequences; the model then packs the
projected features with ``pack_image_features``: base grid first, then the crops stitched into one grid,
unpadded, (OneVision, ``anyres_max_N``) bilinearly downsampled when too large, and an ``image_newline``
column closing each row. Rather than re-deriving that geometry, vtr replays the model's own
``pack_image_features`` on per-token values of its choice (attention scores, mean keys, one-hot crop
membership) with the same arguments the encode used (recorded by ``recording_packing``). Whatever the
packing does to features it does to those values, so they line up slot for slot with the features:

* unpadding slices values exactly like features;
* where OneVision interpolates features, scores and keys are interpolated with the same bilinear
  weights: a packed token's score is the weighted mean of the scores of the encoder tokens its
  features were mixed from (scores of one sequence sum to one, so interpolated scores stay comparable
  across crops, only no longer summing to one);
* newline slots get zeros; they are structural and never reach a method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest
from vtr.vision.attention import AttentionCapture, clip_like_attention


@dataclasses.dataclass
class Packing:
    """What one ``pack_image_features`` call received, minus the features and the newline vector."""

    patches: list[int] = dataclasses.field(default_factory=list)  # encoder sequences per image: base + crops
    tokens: int = 0  # feature tokens per encoder sequence
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    replay: Callable[..., Any] | None = None

    def pack(self, values: Tensor) -> list[Tensor]:
        """Pack per-sequence values (sequences, tokens, C) as the model packed the features: (slots, C) per image."""
        if self.replay is None:
            raise RuntimeError("no image was packed: pack_image_features did not run in this encode")
        per_image = list(values.split(self.patches))
        newline = torch.zeros(values.shape[-1], dtype=values.dtype, device=values.device)
        packed = self.replay(image_features=per_image, image_newline=newline, **self.arguments)
        return list(packed[0])


@contextlib.contextmanager
def recording_packing(model: nn.Module) -> Iterator[Packing]:
    """Record the arguments of ``model.pack_image_features`` during the block (the model calls it
    through ``self``, so an instance attribute takes its place)."""
    original = model.pack_image_features
    signature = inspect.signature(original)
    record = Packing()

    def pack(*args: Any, **kwargs: Any):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        features = arguments.pop("image_features")
        record.patches, record.tokens = [int(f.shape[0]) for f in features], int(features[0].shape[1])
        arguments.pop("image_newline")
        record.arguments, record.replay = arguments, original
        return original(*args, **kwargs)

    model.__dict__["pack_image_features"] = pack
    try:
        yield record
    finally:
        model.__dict__.pop("pack_image_features", None)


def encoder_attention(attention_module: Callable[[int], nn.Module], capture: AttentionCapture,
                      request: AttentionRequest, drop_cls: int) -> tuple[Tensor, Tensor]:
    """Scores (sequences, n) and mean keys (sequences, n, d) of every encoder sequence of a CLIP/SigLIP
    tower at the requested layer, without the ``drop_cls`` leading tokens the model does not feed the LLM
    (CLIP's class token under the ``"default"`` strategy)."""
    hidden, _ = capture.hidden_states(request.layer)
    with torch.no_grad():
        attention = clip_like_attention(attention_module(request.layer), hidden, request.query)
    return torch.stack(attention.scores)[:, drop_cls:], torch.stack(attention.keys)[:, drop_cls:]


def anyres_image_attention(attention_module: Callable[[int], nn.Module], capture: AttentionCapture,
                           requests: dict[str, AttentionRequest], packing: Packing,
                           drop_cls: int) -> list[dict[str, tuple[Tensor, Tensor]]]:
    """Per image, per request: (scores (slots,), mean keys (slots, d)) aligned with the packed features.

    Scores come per encoder sequence (base image or crop, softmax over that sequence).
    """
    per_image: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in packing.patches]
    for name, request in requests.items():
        scores, keys = encoder_attention(attention_module, capture, request, drop_cls)
        for item, packed in zip(per_image, packing.pack(torch.cat([scores.unsqueeze(-1), keys], -1))):
            item[name] = (packed[:, 0], packed[:, 1:])
    return per_image


def with_crops(layouts: list[ItemLayout], packing: Packing, device: torch.device) -> list[ItemLayout]:
    """``layouts`` with each AnyRes crops segment split into its crops' boxes (``Segment.crops``).

    A one-hot crop membership per encoder token is packed like the features; after OneVision's
    interpolation a packed token belongs to the crop with the largest bilinear weight. The weights are
    separable over rows and columns, so every crop covers a rectangle of the packed grid.
    """
    crops = max(packing.patches) - 1
    if crops < 1:
        return layouts
    membership = torch.zeros(sum(packing.patches), packing.tokens, crops, device=device)
    starts = torch.tensor([0] + packing.patches[:-1], device=device).cumsum(0)
    for start, n in zip(starts.tolist(), packing.patches):  # crop j of an image is sequence start + 1 + j
        membership[start + 1:start + n] = torch.eye(crops, device=device)[:n - 1].unsqueeze(1)
    result = []
    for layout, packed in zip(layouts, packing.pack(membership)):
        if len(layout.segments) != 2:  # base image only (OneVision multi-image): no crops
            result.append(layout)
            continue
        base, grid = layout.segments
        _, rows, width = grid.grid
        crop_of = packed[layout.content[grid.start:grid.stop]].argmax(-1).view(rows, width)
        result.append(dataclasses.replace(layout, segments=(base, dataclasses.replace(grid, crops=_boxes(crop_of)))))
    return result


def _boxes(crop_of: Tensor) -> tuple[tuple[int, int, int, int], ...]:
    """(top, bottom, left, right) of each crop present in a (rows, width) crop-id map, in crop order."""
    boxes = []
    for crop in torch.unique(crop_of).tolist():  # a handful of crops per image
        ys, xs = (crop_of == crop).nonzero(as_tuple=True)
        box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        if (box[1] - box[0]) * (box[3] - box[2]) != ys.numel():
            raise ValueError(f"crop {crop} does not cover a rectangle of the packed grid")
        boxes.append(box)
    return tuple(boxes)
