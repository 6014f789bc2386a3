"""Vision-encoder merging (tome, dymu) on LLaVA-NeXT / OneVision / NeXT-Video AnyRes images.

The encoder merges every base-image and crop sequence on its own (one row of the encoder batch each;
DyMU rows lose different numbers of tokens and are padded). How merged crops reach the LLM:

* right after the projector (token-wise, so this equals spreading before it), a hook spreads every
  row's merged features back over its original patches, each patch carrying its merged token's
  features; the model's own ``pack_image_features`` then packs them unchanged: base grid, crops
  stitched and unpadded, ``image_newline`` closing each row;
* each merged token then becomes one LLM token at the packed slot of its first member in packed raster
  order (a merged token never spans two crops: each crop is its own sequence), so merged tokens reach
  the LLM in packed order with sensible positions; members cut away by unpadding are simply absent;
* newline tokens follow the engine's rule: kept when a kept token lies in the row they close;
* with virtual token unmerging every slot stays, so the LLM attends over exactly the vanilla packed
  sequence (unlike the reference, which flattens the crops without unpadding or newlines).

Which packed slot holds which encoder patch is read by replaying the model's packing on patch indices
(``vtr.adapters.llava_attention.Packing``). OneVision's ``anyres_max_N`` downsampling interpolates
features bilinearly, so a downsampled slot mixes patches of several merged tokens: that case is refused
with a ``ReductionError``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from vtr.adapters.llava_attention import Packing
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import Reduction
from vtr.ops.grid import group_first_member
from vtr.vision.merging import EncoderMerging


@contextlib.contextmanager
def spreading_projector(projector: nn.Module, merging: EncoderMerging) -> Iterator[None]:
    """During the block, the projector's output comes spread back over every original patch."""
    handle = projector.register_forward_hook(lambda module, args, output: merging.spread_rows(output))
    try:
        yield
    finally:
        handle.remove()


def anyres_merges(packing: Packing, merging: EncoderMerging, features: list[Tensor],
                  layouts: list[ItemLayout]) -> list[tuple[Reduction, tuple[int, ...], int]]:
    """Per image: the merge as a reduction of its content slots, and the tokens each encoder layer processed
    and the projector saw for it (the longest of its base/crop rows: they run as one padded batch)."""
    tokens, rows = packing.tokens, sum(packing.patches)
    patch_index = torch.arange(rows * tokens, dtype=torch.float64, device=features[0].device)
    located = packing.pack(patch_index.view(rows, tokens, 1))
    group = torch.stack([merging.assignment(r) for r in range(rows)]).to(patch_index.device)  # (rows, tokens)
    group = (group + torch.arange(rows, device=group.device)[:, None] * (int(group.max()) + 1)).flatten()
    counts, projected = merging.per_layer_counts(), merging.feature_counts()
    out, first_row = [], 0
    for feats, layout, where, n in zip(features, layouts, located, packing.patches):
        source = where[layout.content.to(where.device), 0]
        if not torch.equal(source, source.round()) or source.unique().numel() != source.numel():
            raise ReductionError(
                "this LLaVA-OneVision image's crops grid was downsampled (vision_aspect_ratio anyres_max_N) by "
                "bilinear interpolation, which mixes patches of several merged tokens into one LLM token; vision-"
                "encoder merging cannot say what such a token stands for. Use a smaller image, a larger "
                "anyres_max, or a pre-LLM method (divprune, hiprune, ...)")
        _, members = torch.unique(group[source.long()], return_inverse=True)
        n_out = int(members.max()) + 1
        first = group_first_member(members, n_out)
        order = first.argsort()
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n_out, device=order.device)
        kept = first[order].to(feats.device)
        assignment = rank[members].to(feats.device)
        reduction = Reduction(kept=kept, features=feats[layout.content][kept], assignment=assignment)
        image_rows = slice(first_row, first_row + n)
        out.append((reduction, tuple(max(layer) for layer in zip(*counts[image_rows])), max(projected[image_rows])))
        first_row += n
    return out
