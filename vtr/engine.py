"""The pre-LLM reduction engine: encode visual inputs once, reduce each, shrink the prompt to match.

Reducing before the LLM is exact by construction when every per-token input is shrunk consistently:
``input_ids``, ``attention_mask``, ``position_ids``, ``mm_token_type_ids``, ``labels``, and the
features handed to the model through ``mm_encoder_outputs``. The KV cache then only ever holds the kept
tokens, and generation continues from the kept positions.

Rows of a batch may keep different numbers of tokens (different images, prompts without images), so
the reduced batch is re-packed with left padding to the longest row. Original padding is dropped and
rebuilt, which makes a padded batch equal to its rows run alone.

A vision-stage method (tome, dymu) merges inside the encoder instead (``vtr.vision.merging``). Its
merged features are spread back over every patch (``merged[assignment]``), so the placeholder and
layout checks run unchanged, and each item gets the merge's ``Reduction`` in place of a pre-LLM
method's. With virtual token unmerging (``vtu=True``) nothing is dropped from the prompt: every
placeholder carries its merged token's features, and ``ReducedCall.token_representative`` tells the
in-LLM hooks (``vtr.llm.unmerge``) which columns are copies of which merged token.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vtr.adapters.base import Adapter
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.measure.timing import ENCODER_SECTION, section
from vtr.ops.packing import left_packed
from vtr.methods.base import AttentionRequest, Method, Reduction, VisualItem
from vtr.methods.vision import VisionMethod
from vtr.positions import ChunkPositions, PositionScheme
from vtr.stats import CallStats, ItemStats, SampleStats
from vtr.vision.merging import EncoderMerging


@dataclass
class ReducedCall:
    """Inputs for the model's own forward/generate, plus how they map back to the caller's inputs."""

    kwargs: dict[str, Any]
    kept_index: Tensor  # (B, L'): original column of each reduced column, -1 on padding
    stats: CallStats
    gapped_positions: bool  # 1-D positions with gaps: uncached passes need an explicit mask
    token_item: Tensor  # (B, L'): item id (unique in the batch) of each content column, -1 elsewhere
    token_structural: Tensor  # (B, L'): True on kept structural (newline) columns
    item_sizes: tuple[int, ...]  # content columns of each item (by id) in the reduced prompt
    padded: bool  # some row of the reduced prompt is shorter than L' (its mask has zeros)
    # (B, L') with virtual unmerging: the column whose token stands for each column (itself unless merged)
    token_representative: Tensor | None = None
    # (R, B, L', C) with positions="ppe": the rotary positions of every chunk of every column (vtr.positions)
    chunk_positions: Tensor | None = None


def reduce_inputs(
    adapter: Adapter, method: Method, positions: str | PositionScheme, inputs: dict[str, Any], for_generate: bool,
    vision: VisionMethod | None = None,
) -> ReducedCall:
    """Reduce every visual input in ``inputs`` with ``method`` (or ``vision``, merging inside the encoder)
    and shrink the prompt to match."""
    with section("pre_llm"):
        return _reduce_inputs(adapter, method, PositionScheme.make(positions), inputs, for_generate, vision)


def _reduce_inputs(
    adapter: Adapter, method: Method, scheme: PositionScheme, inputs: dict[str, Any], for_generate: bool,
    vision: VisionMethod | None,
) -> ReducedCall:
    if inputs.get("input_ids") is None:
        raise ReductionError(
            "vtr needs input_ids to find the visual placeholder tokens; pass input_ids (not inputs_embeds) "
            "together with the pixel inputs"
        )
    inputs = adapter.fill_missing_inputs(inputs)
    ids: Tensor = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    # encode and locate everything first: a placeholder mismatch must be reported as such, before
    # position computation trips over it with an opaque shape error
    # the AnyRes crop boxes (the packing replayed: ~75 ops per call) only for a method that reads them
    crop_boxes = vision is not None or method.reads_crop_boxes()
    encoded = [_encode(adapter, modality, inputs, ids, mask,
                       method.attention_requests(adapter.vision_info()) if method.wants_attention(modality) else {},
                       vision, crop_boxes)
               for modality in adapter.present_modalities(inputs)]
    full_positions = adapter.positions({**inputs, "attention_mask": mask}, for_generate)
    chunks = ChunkPositions(adapter.rope_positions(full_positions), scheme) if scheme.ppe else None

    keep = mask.bool()  # original padding is dropped here and rebuilt below
    keep = keep.clone() if keep is mask else keep
    items_per_row: list[list[ItemStats]] = [[] for _ in range(ids.shape[0])]
    expand = vision is not None and vision.vtu
    columns = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    roles = _TokenRoles(torch.full_like(ids, -1), torch.zeros_like(keep), columns,
                        columns.clone() if expand else None)
    mm_encoder_outputs = {
        visual.modality: _reduce_modality(adapter, method, visual, keep, items_per_row, roles, expand, chunks)
        for visual in encoded
    }

    whole = vision is None and chunks is None and method.keeps_every_token
    unchanged = _unchanged_rows(keep, mask) if whole else None
    if unchanged is not None:  # every column kept, rows already left-padded: the caller's inputs as they are
        return _unchanged_call(adapter, method, scheme, inputs, mask, keep, full_positions, mm_encoder_outputs,
                               items_per_row, roles, unchanged)
    packed = left_packed(keep)
    kept_index, valid, lengths = packed
    new_mask = valid.to(mask.dtype)
    compact = scheme.mode == "compact"
    kwargs = {k: v for k, v in inputs.items() if k not in adapter.consumed_keys(inputs)}
    at_kept = ColumnGather(kept_index)
    for key, value in inputs.items():
        if (key in kwargs and key not in ("position_ids", "attention_mask") and isinstance(value, Tensor)
                and value.shape[:2] == ids.shape):
            kwargs[key] = at_kept(value, pad=pad_value(adapter, key))
    kwargs["attention_mask"] = new_mask
    kwargs["position_ids"] = adapter.finish_positions(
        ColumnGather(kept_index if roles.position is None else at_kept(roles.position, pad=-1)).positions(
            full_positions), new_mask, compact
    )
    kwargs["mm_encoder_outputs"] = mm_encoder_outputs

    representative = _reduced_representatives(roles.representative, kept_index, at_kept) if expand else None
    if representative is None:
        prompt_before, prompt_after = mask.sum(1).tolist(), lengths
    else:  # copies of a merged token only widen the attention, not the prompt
        copies = (representative != torch.arange(kept_index.shape[1], device=ids.device)).sum(1)
        prompt_before, prompt_after = torch.stack([mask.sum(1), valid.sum(1) - copies]).tolist()
    samples = tuple(SampleStats(tuple(items), n_before, n_kept)
                    for items, n_before, n_kept in zip(items_per_row, prompt_before, prompt_after))
    # keep only ever loses attended columns, and virtual unmerging keeps every slot
    dropped_any = not expand and prompt_after != prompt_before
    return ReducedCall(
        kwargs=kwargs,
        kept_index=kept_index,
        stats=CallStats(method=method.describe(), positions=scheme.mode, samples=samples),
        gapped_positions=dropped_any and not compact and full_positions.shape[0] == 1,
        token_item=at_kept(roles.item, pad=-1),
        token_structural=at_kept(roles.structural, pad=False),
        item_sizes=tuple(roles.sizes),
        padded=not packed.full,
        token_representative=representative,
        chunk_positions=None if chunks is None else chunks.gathered(kept_index),
    )


def _unchanged_rows(keep: Tensor, mask: Tensor) -> list[int] | None:
    """Each row's length, when a call that kept every column already has the packed layout (rows
    left-padded, as ``generate`` wants them); ``None`` when it must be repacked. One host read, and one
    more where some row is padded."""
    lengths = mask.sum(1).tolist()
    if min(lengths) == keep.shape[1] or bool((keep[:, 1:] >= keep[:, :-1]).all()):
        return lengths
    return None


def _unchanged_call(adapter: Adapter, method: Method, scheme: PositionScheme, inputs: dict[str, Any],
                    mask: Tensor, keep: Tensor, full_positions: Tensor, mm_encoder_outputs: dict[str, Any],
                    items_per_row: list[list[ItemStats]], roles: _TokenRoles, lengths: list[int]) -> ReducedCall:
    """The call for a prompt that keeps its every column in place: packing, gathering and checking would
    reproduce the caller's tensors, so they are passed on as given (what ``vtr.reduced(model, "none")``
    costs is only the encoder hand-off and the bookkeeping here)."""
    padded = min(lengths) < keep.shape[1]
    padding = ~keep if padded else None
    kwargs = {k: v for k, v in inputs.items() if k not in adapter.consumed_keys(inputs)}
    kwargs["attention_mask"] = mask
    kwargs["position_ids"] = adapter.finish_positions(
        full_positions.masked_fill(padding, 0) if padded else full_positions, mask, scheme.mode == "compact")
    kwargs["mm_encoder_outputs"] = mm_encoder_outputs
    samples = tuple(SampleStats(tuple(items), n, n) for items, n in zip(items_per_row, lengths))
    return ReducedCall(
        kwargs=kwargs,
        kept_index=roles.columns.masked_fill(padding, -1) if padded else roles.columns,
        stats=CallStats(method=method.describe(), positions=scheme.mode, samples=samples),
        gapped_positions=False,
        token_item=roles.item,  # -1 on padding already: placeholders never sit under it (_checked_slots)
        token_structural=roles.structural,
        item_sizes=tuple(roles.sizes),
        padded=padded,
    )


@dataclass
class _TokenRoles:
    """Per input column: the visual item a content token belongs to (-1 = none), structural tokens, the
    column whose token stands for it (itself, unless virtual unmerging copies a merged token; made only
    then), and the column whose original position it takes (itself, unless a reduction's ``origin`` moves
    it; made at the first such move, ``None`` = every column keeps its own)."""

    item: Tensor
    structural: Tensor
    columns: Tensor  # (B, L) each column's own index (read-only, expanded)
    representative: Tensor | None = None
    position: Tensor | None = None
    sizes: list[int] = field(default_factory=list)  # content columns each item keeps, by item id

    @property
    def count(self) -> int:
        """Items recorded so far: the id the next one gets."""
        return len(self.sizes)

    def moved_positions(self) -> Tensor:
        if self.position is None:
            self.position = self.columns.clone()
        return self.position


@dataclass
class _EncodedModality:
    modality: str
    output: Any  # the model's own encoder output (a ModelOutput)
    features: list[Tensor]
    slots: list[tuple[int, Tensor]]  # (batch row, placeholder columns) per item
    layouts: list[ItemLayout]
    attention: list[dict[str, tuple[Tensor, Tensor]]]  # per item: what the method asked of the encoder
    merges: list[Reduction | None]  # per item: the vision stage's merge, if one ran
    encoder_tokens: list[tuple[int, ...]]  # per item: tokens each encoder layer processed (vision stage)
    projected: list[int]  # per item: feature tokens per encoder sequence the projector saw (vision stage)


def _encode(adapter: Adapter, modality: str, inputs: dict[str, Any], ids: Tensor, mask: Tensor,
            requests: dict[str, AttentionRequest], vision: VisionMethod | None,
            crop_boxes: bool = True) -> _EncodedModality:
    attention: list[dict[str, tuple[Tensor, Tensor]]] = []
    merging = None if vision is None else EncoderMerging(adapter.merge_target(), vision.matcher)
    with contextlib.ExitStack() as stack:
        capture = stack.enter_context(adapter.capture_attention(requests)) if requests else None
        if merging is not None:
            stack.enter_context(merging.installed())
            stack.enter_context(adapter.merging_encode(modality, merging))
        with section(ENCODER_SECTION):  # the model's own encoder: not vtr's overhead
            output = adapter.encode(modality, inputs)
    if capture is not None:
        attention = adapter.item_attention(modality, capture, requests, inputs)
    features = adapter.item_features(modality, output)
    if merging is not None:  # each patch carries its merged token's features
        features = adapter.spread_merged(modality, merging, features)
    slots = _checked_slots(adapter, modality, ids, mask, features)
    try:
        layouts = (adapter.item_layouts if crop_boxes else adapter.coarse_item_layouts)(modality, inputs, features)
        for feats, layout in zip(features, layouts):
            layout.check(feats.shape[0])
    except ValueError as error:
        raise ReductionError(
            f"{type(adapter).__name__} could not describe a {modality} of this "
            f"{adapter.config.model_type} model ({error}); this is a vtr adapter bug, please report it with "
            f"the model config and image size"
        ) from error
    merges: list[Reduction | None] = [None] * len(features)
    encoder_tokens: list[tuple[int, ...]] = [()] * len(features)
    projected = [0] * len(features)
    if merging is not None:
        merges, encoder_tokens, projected = map(list, zip(*adapter.item_merges(modality, merging, features, layouts)))
    return _EncodedModality(modality, output, features, slots, layouts,
                            attention or [{} for _ in features], merges, encoder_tokens, projected)


def _reduce_modality(
    adapter: Adapter,
    method: Method,
    visual: _EncodedModality,
    keep: Tensor,
    items_per_row: list[list[ItemStats]],
    roles: _TokenRoles,
    expand: bool,
    chunks: ChunkPositions | None,
) -> Any:
    """Reduce each item of one modality; clear its dropped slots in ``keep``; return the reduced encoder output.

    The method sees the content tokens only; structural tokens follow the rows they close (``vtr.layout``).
    ``expand`` (virtual unmerging) keeps every slot, each carrying its output token's features. ``chunks``
    (positions="ppe") records each output token's per-chunk positions from the reduction's provenance.
    """
    rank_in_row = [0] * keep.shape[0]
    new_features, reductions = [], []
    for feats, (row, cols), layout, attention, merge, encoder_tokens, projected in zip(
            visual.features, visual.slots, visual.layouts, visual.attention, visual.merges, visual.encoder_tokens,
            visual.projected):
        if merge is None and chunks is None and method.keeps_every_token:
            new_features.append(feats)
            reductions.append(_kept_whole(visual.modality, feats, row, cols, layout, items_per_row, roles))
            continue
        at_content = (lambda values: values) if layout.plain else (lambda values: values[layout.content])
        attention = {name: (at_content(scores), at_content(keys)) for name, (scores, keys) in attention.items()}
        item = VisualItem(at_content(feats), layout.segments, visual.modality, rank_in_row[row], attention)
        rank_in_row[row] += 1
        reduction = merge if merge is not None else method.reduce(item)
        outputs = reduction.output_features(item)  # one gather for a selection, reused below
        _check_reduction(method, item, reduction, outputs)
        provenance = reduction.provenance(item.num_tokens)
        if chunks is not None:  # an encoder merge left no member features here: PPE uses its position proxy
            centre = None if merge is not None else (item.features, outputs)
            chunks.add(row, cols[layout.content], reduction.kept, provenance, centre)
        if expand:
            new_features.append(_expanded_features(method, feats, layout, outputs, provenance))
            structural = layout.structural
            roles.representative[row, cols[layout.content]] = cols[layout.content[reduction.kept[provenance]]]
        elif layout.plain:  # the kept tokens are the kept slots, already in slot order
            structural = layout.structural
            new_features.append(outputs)
            _keep_only(keep, row, cols, reduction.kept)
        else:
            content_kept = torch.zeros(item.num_tokens, dtype=torch.bool, device=feats.device)
            content_kept[reduction.kept] = True
            structural = layout.structural[layout.structural_kept(content_kept)]
            slots = torch.cat([layout.content[reduction.kept], structural])
            new_features.append(torch.cat([outputs, feats[structural]])[slots.argsort()])
            _keep_only(keep, row, cols, slots)
        # every content column gets the item's id: the dropped ones are never gathered (token_item)
        roles.item[row, cols if layout.plain else cols[layout.content.to(cols.device)]] = roles.count
        if reduction.origin is not None:
            roles.moved_positions()[row, cols[layout.content[reduction.kept].to(cols.device)]] = cols[
                layout.content[reduction.origin].to(cols.device)]
        if structural.numel():
            roles.structural[row, cols[structural.to(cols.device)]] = True
        roles.sizes.append(item.num_tokens if expand else reduction.kept.numel())
        reductions.append(reduction)
        items_per_row[row].append(ItemStats(
            visual.modality, feats.shape[0], reduction.kept.numel() + structural.numel(), layout.structural.numel(),
            structural.numel(), stage="vision" if merge is not None else "pre_llm",
            vision_per_layer=encoder_tokens, vision_projected=projected, provenance=tuple(provenance.tolist()),
            parts=reduction.parts))
    return adapter.with_features(visual.modality, visual.output, new_features, reductions)


def _keep_only(keep: Tensor, row: int, cols: Tensor, slots: Tensor) -> None:
    """Clear ``keep`` at the item's placeholder columns ``cols`` except at its kept ``slots``: every
    placeholder column is attended (``_checked_slots``), so the kept-slot mask is the new value."""
    kept = torch.zeros(cols.shape[0], dtype=torch.bool, device=cols.device)
    kept[slots.to(cols.device)] = True
    keep[row, cols] = kept


def _kept_whole(modality: str, feats: Tensor, row: int, cols: Tensor, layout: ItemLayout,
                items_per_row: list[list[ItemStats]], roles: _TokenRoles) -> Reduction:
    """An item the pre-LLM stage keeps whole (``KeepAll``, e.g. under an in-LLM method): its features and
    slots stay as they are, so only the roles of its columns are recorded (no gathers, no checks)."""
    n_content, n_structural = layout.content.numel(), layout.structural.numel()
    roles.item[row, cols[layout.content.to(cols.device)]] = roles.count
    if n_structural:
        roles.structural[row, cols[layout.structural.to(cols.device)]] = True
    roles.sizes.append(n_content)
    items_per_row[row].append(ItemStats(modality, feats.shape[0], feats.shape[0], n_structural, n_structural,
                                        provenance=tuple(range(n_content))))
    return Reduction(kept=torch.arange(n_content, device=feats.device))


def _expanded_features(method: Method, feats: Tensor, layout: ItemLayout, outputs: Tensor,
                       provenance: Tensor) -> Tensor:
    """Every slot of the item, each content token carrying the features (``outputs``) of the output token it
    went into."""
    if bool((provenance < 0).any()):
        raise ReductionError(f"virtual token unmerging needs every token merged into an output token, but "
                             f"{method.describe()} dropped some")
    expanded = feats.clone()
    expanded[layout.content] = outputs[provenance]
    return expanded


def _reduced_representatives(representative: Tensor, kept_index: Tensor, at_kept: ColumnGather) -> Tensor:
    """(B, L') the reduced column whose token stands for each reduced column (padding: itself)."""
    valid = kept_index >= 0
    own = torch.arange(kept_index.shape[1], device=kept_index.device).expand_as(kept_index)
    reduced_of = torch.zeros_like(representative)  # original column -> reduced column
    rows, cols = valid.nonzero(as_tuple=True)
    reduced_of[rows, kept_index[rows, cols]] = cols
    original = at_kept(representative, pad=0)
    return torch.where(valid, reduced_of.gather(1, original), own)


def _checked_slots(
    adapter: Adapter, modality: str, ids: Tensor, mask: Tensor, features: list[Tensor]
) -> list[tuple[int, Tensor]]:
    """(row, placeholder columns) of each item, matching the model's row-major masked_scatter order, after
    checking the features are finite and the placeholders match them (all in one host read)."""
    token_id = adapter.placeholder_token_id(modality)
    is_placeholder = ids == token_id
    counts = [f.shape[0] for f in features]
    rows, cols = is_placeholder.nonzero(as_tuple=True)  # row-major: each item's slots are one run of these
    if rows.numel() != sum(counts):
        raise ReductionError(
            f"the prompt has {rows.numel()} {modality} placeholder tokens (id {token_id}) but the "
            f"{len(counts)} {modality} input(s) give {sum(counts)} features {counts}; build input_ids and "
            f"pixels with the model's processor in one call, one placeholder per {modality} in the text"
        )
    ends = list(itertools.accumulate(counts))
    edge_slots = torch.tensor([end - count for end, count in zip(ends, counts)] + [end - 1 for end in ends],
                              device=rows.device)
    # one host read: each item's first and last row, whether a placeholder sits under padding, NaN features
    flags = torch.stack([(mask[rows, cols] == 0).any(), *(f.isnan().any() for f in features)])
    read = torch.cat([rows[edge_slots], flags]).tolist()
    edges, masked, nan = read[:2 * len(counts)], read[2 * len(counts)], read[2 * len(counts) + 1:]
    if any(nan):
        raise ReductionError(
            f"the vision encoder produced NaN {modality} features, so no reduction can be trusted; check "
            f"pixel_values for NaN, and if the model runs in float16 try bfloat16 or float32 (fp16 overflow)"
        )
    if masked:
        raise ReductionError(
            f"{modality} placeholder tokens sit under attention_mask == 0; pad with the pad token, not with "
            f"placeholders, and keep the mask at 1 over the visual tokens"
        )
    first, last = edges[:len(counts)], edges[len(counts):]
    for index, (row, last_row, count) in enumerate(zip(first, last, counts)):
        if row != last_row:
            raise ReductionError(
                f"{modality} {index} has its {count} placeholder tokens spread over several batch "
                f"rows; each row needs exactly as many placeholders as its own {modality}s have tokens"
            )
    return list(zip(first, cols.split(counts)))


def _check_reduction(method: Method, item: VisualItem, reduction: Reduction, out: Tensor) -> None:
    """Cheap structural checks: a method bug must fail loudly, not scramble the prompt."""
    kept, origin = reduction.kept, reduction.origin
    ok = kept.dim() == 1 and kept.numel() >= 1 and not kept.is_floating_point()
    ok = ok and out.shape == (kept.numel(), item.features.shape[-1])
    ok = ok and (origin is None or (origin.shape == kept.shape and not origin.is_floating_point()))
    if ok:  # one host read: the first and last index, ascending (so unique), origins in range
        flags = [kept[[0, -1]], (kept[1:] > kept[:-1]).all().view(1)]
        if origin is not None:
            flags.append(((origin >= 0) & (origin < item.num_tokens)).all().view(1))
        first, last, *valid = torch.cat(flags).tolist()
        ok = first >= 0 and last < item.num_tokens and all(valid)
    if not ok:
        raise ReductionError(
            f"{method.describe()} returned an invalid reduction for a {item.modality} of {item.num_tokens} "
            f"tokens: kept indices must be ascending, unique and in range, with one feature row each (and one "
            f"in-range origin each, when given)"
        )


class ColumnGather:
    """Gathers the sequence columns ``index`` (B, L') (-1 = padding) of per-token tensors.

    One call reduces several per-token tensors at the same columns: the clamped index and the padding
    mask are made once here, so each tensor costs one gather and one fill.
    """

    def __init__(self, index: Tensor) -> None:
        self.source = index.clamp_min(0)
        self.padding = index < 0

    def __call__(self, values: Tensor, pad: int | float) -> Tensor:
        """Columns of a tensor shaped (B, L, ...)."""
        if values.dim() == 2:
            return values.gather(1, self.source).masked_fill(self.padding, pad)
        trailing = [1] * (values.dim() - 2)
        source = self.source.view(*self.source.shape, *trailing).expand(*self.source.shape, *values.shape[2:])
        return values.gather(1, source).masked_fill(self.padding.view(*self.padding.shape, *trailing), pad)

    def positions(self, positions: Tensor) -> Tensor:
        """Columns of ``(rows, B, L)`` position ids; padding gets position 0 as in generate()."""
        rows = positions.shape[0]
        return positions.gather(2, self.source.expand(rows, -1, -1)).masked_fill(self.padding, 0)


def gather_columns(values: Tensor, index: Tensor, pad: int | float) -> Tensor:
    """Gather the sequence columns ``index`` (B, L') of a per-token tensor shaped (B, L, ...)."""
    return ColumnGather(index)(values, pad)


def pad_value(adapter: Adapter, key: str) -> int:
    if key == "labels":
        return -100
    if key == "input_ids":
        pad = getattr(adapter.config, "pad_token_id", None)
        if pad is None:
            pad = getattr(getattr(adapter.config, "text_config", None), "pad_token_id", None)
        return int(pad) if pad is not None else 0
    return 0
