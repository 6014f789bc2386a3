"""Analytical FLOPs of one call, per sample: vision encoder, projector, LLM prefill per decoder layer,
decoding, and vtr's own reduction work, from the model config and the call's geometry (never by
running the model).

The counting rules are those of ``torch.utils.flop_counter.FlopCounterMode``, so that the two can be
compared (the tests do, for every supported family):

* Only matrix products count: linear layers, convolutions (patch embeddings), attention, vtr's
  similarity matmuls. Norms, activations, softmax, rotary embeddings, embedding lookups, pooling and
  interpolation, bias and residual additions, gathers and sorts count 0.
* A multiply-add is 2 FLOPs: (m x k) @ (k x n) costs 2mkn; a convolution 2 * output positions *
  out channels * in channels * kernel volume (a patch embedding is a matmul over the patches).
* Attention counts as FlopCounterMode counts ``scaled_dot_product_attention`` (its formula for the
  flash, memory-efficient and cuDNN kernels, ``sdpa_flop_count``): the full Lq x Lk score matmul and
  the weighted sum for every query head, 4 * heads * Lq * Lk * head_dim. A causal mask does not halve
  it (the formula is an upper bound for masked attention), and GQA key/value heads are broadcast, so
  only the query heads matter. Eager attention's two matmuls count the same. torch's CPU flash kernel
  (``_scaled_dot_product_flash_attention_for_cpu``) and the flash-attn package's kernels have no
  formula and count 0 under FlopCounterMode; register ``sdpa_flop_count`` for them to compare.

Assumptions, each the behaviour of transformers 5.x:

* One breakdown per batch row, as if the row ran alone: padding and pad slots cost nothing.
* Vision encoders run every layer, whatever ``vision_feature_layer`` selects. SigLIP's attention-pooling
  head runs when ``vision_use_head`` is set, though LLaVA-OneVision discards its output. After a
  vision-stage merge (tome, dymu) each encoder layer costs its real token count (``vtr.stats`` records
  it per layer) and the projector sees the merged tokens; an AnyRes image's base and crops run as one
  batch padded to its longest sequence, and padding costs like tokens (an image alone in its row; a
  row with several AnyRes images pads them all to the longest, which this model does not count).
* CLIP sequences carry a CLS token, SigLIP's none. LLaVA-NeXT/OneVision encode the base image and
  every AnyRes crop (``image_size_to_num_patches`` on ``image_sizes``; OneVision encodes the base
  image only when ``batch_num_images`` says a row has several images). Videos encode every frame.
* The LLaVA projector (two linears) sees every encoded token of every crop minus the CLS token under
  the ``"default"`` feature strategy, before unpadding or pooling; LLaVA-NeXT-Video's videos after
  its spatial pooler (whose conv counts in ``projector`` in ``"conv"`` mode). Qwen-VL's patch merger
  (two linears on ``merge**2`` patches) counts in ``projector``, once more per Qwen3-VL deepstack layer.
* Qwen-VL vision attention runs per frame (temporal patch); Qwen2.5-VL's windowed blocks per window of
  ``window_size`` pixels (``fullatt_block_indexes`` per frame). Qwen2-VL and Qwen3-VL vision MLPs have
  two matmuls, Qwen2.5-VL's three (gated); every supported LLM's MLP three (gated, dense; mixtures of
  experts are not modelled).
* Decoder layer l of the prefill sees ``prompt_after`` tokens, minus the visual tokens an in-LLM
  method dropped before it. ``logits="all"`` applies the LM head to every token leaving the last layer
  (``forward``), ``"last"`` to the last one only (``generate``). With virtual token unmerging
  (``vtr.llm.unmerge``) every attention module (projections and attention) runs at the original prompt
  length, the MLPs at the merged one, the KV cache holds the original length and the LM head of
  ``forward`` sees every original position.
* ``new_tokens`` counts the tokens generated: the first comes from the prefill, each later one costs
  a decoding step of one token against every cached key of each layer plus the LM head.
* ``reduction`` holds vtr's own matmuls: DivPrune's cosine-similarity matrix (N x N x D over the
  projected features, for each visual input or part its allocation selects in); an in-LLM method's
  score recompute at layer K-1 (k_proj of every token, q_proj of the query rows, q k^T per head);
  HoliTom's token-similarity matrix at layer K (L x L x D, L the tokens entering layer K); the vision
  attention HiPrune / VisionZip / HoliTom / ``allocation="thumbnail"`` ask for (q/k projections of the
  requested encoder layer and the score matmul of the requested query rows, per attention sequence: image,
  crop, frame or window; each request on its own, as vtr computes them), VisionZip's key similarity to its
  contextual targets, and HoliTom's DPC-KNN distance matrix (n x n x D over the temporal means of each
  segment's n static tokens, where it clusters; its per-position frame similarities are elementwise
  products, no matmul); a vision-stage merge's A x B key similarity
  after every merging layer that merges at all (it runs inside the encoder, so a flop counter books it
  under the vision tower). Keep-all, random and pooling multiply nothing; methods vtr does not ship
  count 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedConfig

from vtr.api import _state, is_wrapped
from vtr.adapters.llava import llava_merge_target_shape, llava_protected, llava_vision_info
from vtr.adapters.qwen_vl import qwen_vision_info
from vtr.methods import DivPrune, HoliTom, HoliTomInner, LayerMethod, Method, VisionMethod, VisionZip
from vtr.methods.base import BudgetedMethod, VisionInfo, split_budget
from vtr.methods.vision import EncoderGeometry
from vtr.stats import CallStats, ItemStats, SampleStats

LLAVA = ("llava", "llava_next", "llava_onevision", "llava_next_video")
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VIT_TOWERS = ("clip_vision_model", "siglip_vision_model")
LOGITS = ("last", "all")
COMPONENTS = ("vision", "projector", "reduction", "llm_prefill", "decode")
UNITS = {"T": 1e12, "G": 1e9, "M": 1e6}


@dataclass(frozen=True)
class VisualInput:
    """One image or video as the vision encoder sees it.

    ``frames``: sequences the encoder runs: LLaVA-family crops (base image + AnyRes crops) or video
    frames; Qwen-VL temporal patches (``grid_thw[0]``). ``height`` x ``width``: the patch grid of each
    (Qwen-VL: before merging, as in ``grid_thw``). After a vision-stage merge (LLaVA-1.5):
    ``encoder_tokens``, the tokens each encoder layer processed (class token included), and
    ``projected``, the tokens the projector saw.
    """

    modality: str
    frames: int
    height: int
    width: int
    encoder_tokens: tuple[int, ...] = ()
    projected: int | None = None

    @property
    def patches(self) -> int:
        return self.frames * self.height * self.width


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs of one sample (batch row). ``llm_prefill`` = the decoder layers + the LM head."""

    vision: float
    projector: float
    llm_prefill: float
    llm_prefill_per_layer: tuple[float, ...]
    decode: float
    reduction: float

    @property
    def total(self) -> float:
        return sum(getattr(self, name) for name in COMPONENTS)

    def as_dict(self) -> dict:
        return {**asdict(self), "llm_prefill_per_layer": list(self.llm_prefill_per_layer), "total": self.total}


# ---------------------------------------------------------------------- counting primitives
def _linear(rows: float, d_in: int, d_out: int) -> float:
    return 2.0 * rows * d_in * d_out


def _scores(heads: int, head_dim: int, queries: float, keys: float) -> float:
    """q @ k^T of every head (the weighted sum costs the same again)."""
    return 2.0 * heads * queries * keys * head_dim


def _block(rows: float, width: int, q_width: int, kv_width: int, attention: float, mlp_width: int,
           mlp_mats: int) -> float:
    """One transformer block on ``rows`` tokens: q/o, k/v projections, ``attention``, an MLP."""
    return (2 * _linear(rows, width, q_width) + 2 * _linear(rows, width, kv_width) + attention
            + mlp_mats * _linear(rows, width, mlp_width))


def _text_dims(config: PreTrainedConfig) -> tuple[int, int, int, int]:
    """(hidden size, query heads, key/value heads, head dim) of the LLM."""
    tc = config.get_text_config()
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_heads = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    return tc.hidden_size, tc.num_attention_heads, kv_heads, head_dim


# ---------------------------------------------------------------------- vision encoder and projector
def _check_supported(config: PreTrainedConfig) -> None:
    if config.model_type not in LLAVA + QWEN:
        raise ValueError(f"no FLOPs model for {config.model_type!r}; supported: {', '.join(LLAVA + QWEN)}")
    if config.model_type in LLAVA and config.vision_config.model_type not in VIT_TOWERS:
        raise ValueError(f"no FLOPs model for a {config.vision_config.model_type!r} vision tower")
    tc = config.get_text_config()
    if getattr(tc, "num_experts", None) or getattr(tc, "num_local_experts", None):
        raise ValueError("mixture-of-experts LLMs are not modelled")


def _tokens_per_frame(config: PreTrainedConfig, item: VisualInput) -> int:
    """LLaVA family: tokens of one encoder sequence (CLIP adds a CLS token)."""
    return item.height * item.width + (config.vision_config.model_type == "clip_vision_model")


def _vit_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    """CLIP / SigLIP: patch embedding, encoder layers and SigLIP's pooling head, per frame."""
    vc = config.vision_config
    d = vc.hidden_size
    per_layer = item.encoder_tokens or (_tokens_per_frame(config, item),) * vc.num_hidden_layers
    embed = _linear(item.patches, vc.num_channels * vc.patch_size ** 2, d)
    layers = sum(_block(n, d, d, d, 2 * _scores(1, d, n, n), vc.intermediate_size, 2) for n in per_layer)
    seq, head = per_layer[-1], 0.0
    if item.encoder_tokens and llava_merge_target_shape(config)[0] == vc.num_hidden_layers:
        seq = item.projected + llava_merge_target_shape(config)[1]  # the last layer merged before the head
    if getattr(vc, "vision_use_head", False):  # one probe query attends to the sequence, then an MLP
        head = (2 * _linear(1, d, d) + 2 * _linear(seq, d, d) + 2 * _scores(1, d, 1, seq)
                + 2 * _linear(1, d, vc.intermediate_size))
    return embed + item.frames * (layers + head)


def _window_sizes(vc: Any, height: int, width: int) -> list[int]:
    """Patches in each Qwen2.5-VL attention window of one frame (edge windows are partial)."""
    merge = vc.spatial_merge_size
    side = vc.window_size // merge // vc.patch_size  # in merged tokens
    rows, cols = height // merge, width // merge
    return [min(side, rows - i) * min(side, cols - j) * merge * merge
            for i in range(0, rows, side) for j in range(0, cols, side)]


def _qwen_vision_width(config: PreTrainedConfig) -> int:
    vc = config.vision_config
    return vc.embed_dim if config.model_type == "qwen2_vl" else vc.hidden_size


def _qwen_vit_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    vc, kind = config.vision_config, config.model_type
    d = _qwen_vision_width(config)
    frame = item.height * item.width
    embed = _linear(item.patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2, d)
    full = item.frames * 2 * _scores(1, d, frame, frame)  # attention never crosses frames
    full_blocks, windowed = set(range(vc.depth)), 0.0
    mlp_width, mlp_mats = (d * vc.mlp_ratio, 2) if kind == "qwen2_vl" else (vc.intermediate_size, 2)
    if kind == "qwen2_5_vl":  # windowed attention and a gated MLP
        full_blocks, mlp_mats = set(vc.fullatt_block_indexes), 3
        windowed = item.frames * sum(2 * _scores(1, d, s, s) for s in _window_sizes(vc, item.height, item.width))
    return embed + sum(_block(item.patches, d, d, d, full if i in full_blocks else windowed, mlp_width, mlp_mats)
                       for i in range(vc.depth))


def _llava_projector_rows(config: PreTrainedConfig, item: VisualInput) -> int:
    """Rows per frame the LLaVA projector sees: the encoder tokens minus CLS under "default"."""
    if item.projected is not None:
        return item.projected
    return _tokens_per_frame(config, item) - (config.vision_feature_select_strategy == "default")


def _llava_projector_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    vc, d_text = config.vision_config, config.get_text_config().hidden_size
    layers = config.vision_feature_layer
    d_in = vc.hidden_size * (1 if isinstance(layers, int) else len(layers))
    per_frame, pooler = _llava_projector_rows(config, item), 0.0
    if config.model_type == "llava_next_video" and item.modality == "video":  # pooled before projecting
        stride = config.spatial_pool_stride
        side = math.isqrt(per_frame) // stride
        per_frame = side * side
        if config.spatial_pool_mode == "conv":
            out_channels = getattr(config, "spatial_pool_out_channels", vc.hidden_size)
            pooler = _linear(item.frames * per_frame, vc.hidden_size * stride ** 2, out_channels)
    rows = item.frames * per_frame
    return pooler + _linear(rows, d_in, d_text) + _linear(rows, d_text, d_text)


def _qwen_merger_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    vc = config.vision_config
    d_merged = _qwen_vision_width(config) * vc.spatial_merge_size ** 2
    rows = item.patches // vc.spatial_merge_size ** 2
    out = vc.hidden_size if config.model_type == "qwen2_vl" else vc.out_hidden_size
    mergers = 1 + len(getattr(vc, "deepstack_visual_indexes", None) or ())
    return mergers * (_linear(rows, d_merged, d_merged) + _linear(rows, d_merged, out))


def vision_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    """The vision encoder's FLOPs for one image or video."""
    return _qwen_vit_flops(config, item) if config.model_type in QWEN else _vit_flops(config, item)


def projector_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    """The projector's (LLaVA) or patch mergers' (Qwen-VL) FLOPs for one image or video."""
    if config.model_type in QWEN:
        return _qwen_merger_flops(config, item)
    return _llava_projector_flops(config, item)


# ---------------------------------------------------------------------- the LLM
def decoder_layer_flops(config: PreTrainedConfig, queries: float, keys: float, mlp_rows: float | None = None) -> float:
    """One decoder layer running ``queries`` tokens against ``keys`` keys (prefill: both = its tokens).

    ``mlp_rows``: tokens the MLP sees when they are fewer than the attention's (virtual unmerging).
    """
    d, heads, kv_heads, head_dim = _text_dims(config)
    attention = 2 * _scores(heads, head_dim, queries, keys)
    mlp = config.get_text_config().intermediate_size
    return (_block(queries, d, heads * head_dim, kv_heads * head_dim, attention, mlp, 0)
            + 3 * _linear(queries if mlp_rows is None else mlp_rows, d, mlp))


def _lm_head_flops(config: PreTrainedConfig, rows: int) -> float:
    tc = config.get_text_config()
    return _linear(rows, tc.hidden_size, tc.vocab_size)


def decode_flops(config: PreTrainedConfig, llm_tokens: Sequence[int], new_tokens: int) -> float:
    """Decoding steps 1 .. ``new_tokens - 1``: step j runs one token against ``llm_tokens[l] + j`` keys
    at layer l, then the LM head. Attention is linear in the keys, so the steps sum in closed form."""
    steps = max(new_tokens - 1, 0)
    if not steps:
        return 0.0
    mean_extra = (steps + 1) / 2  # mean of j over 1 .. steps
    layers = sum(decoder_layer_flops(config, 1, n + mean_extra) for n in llm_tokens)
    return steps * (layers + _lm_head_flops(config, 1))


def model_flops(
    config: PreTrainedConfig,
    visual: Sequence[VisualInput],
    llm_tokens: Sequence[int],
    new_tokens: int = 0,
    logits: str = "last",
    reduction: float = 0.0,
    virtual_tokens: int | None = None,
) -> FlopsBreakdown:
    """FLOPs of one sample from the config and its geometry, e.g. for a checkpoint never run.

    ``visual``: the sample's images and videos. ``llm_tokens``: tokens each decoder layer sees during
    the prefill (``[prompt_tokens] * num_layers`` without an in-LLM stage; ``tokens_per_layer`` reads
    them off ``vtr.stats``). ``reduction``: vtr's own FLOPs (``reduction_flops``). ``virtual_tokens``:
    with virtual token unmerging, the original prompt length every attention module (and the KV cache)
    runs at, while the MLPs see ``llm_tokens``.
    """
    _check_supported(config)
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
    num_layers = config.get_text_config().num_hidden_layers
    if len(llm_tokens) != num_layers:
        raise ValueError(f"llm_tokens needs one count per decoder layer ({num_layers}), got {len(llm_tokens)}")
    if virtual_tokens is None:
        per_layer = tuple(decoder_layer_flops(config, n, n) for n in llm_tokens)
        cached = list(llm_tokens)
    else:
        per_layer = tuple(decoder_layer_flops(config, virtual_tokens, virtual_tokens, n) for n in llm_tokens)
        cached = [virtual_tokens] * num_layers
    head_rows = cached[-1] if logits == "all" else 1
    return FlopsBreakdown(
        vision=sum(vision_flops(config, item) for item in visual),
        projector=sum(projector_flops(config, item) for item in visual),
        llm_prefill=sum(per_layer) + _lm_head_flops(config, head_rows),
        llm_prefill_per_layer=per_layer,
        decode=decode_flops(config, cached, new_tokens),
        reduction=reduction,
    )


def tokens_per_layer(sample: SampleStats, num_layers: int) -> list[int]:
    """Tokens each decoder layer saw in the prefill of a recorded sample."""
    if not sample.visual_per_layer:
        return [sample.prompt_after] * num_layers
    return [sample.prompt_after - (sample.visual_after - visual) for visual in sample.visual_per_layer]


# ---------------------------------------------------------------------- vtr's own work
def _part_sizes(config: PreTrainedConfig, item: VisualInput, content: int, per_frame: bool) -> list[int]:
    """Content tokens of each part a per-segment / per-frame allocation splits an item into (``vtr.layout``)."""
    if item.modality == "video":
        return [content // item.frames] * item.frames if per_frame else [content]
    if config.model_type in LLAVA and item.frames > 1:  # AnyRes: the base image's grid, then the crops grid
        base = _llava_projector_rows(config, item)
        return [base, content - base]
    return [content]


def _selected_parts(config: PreTrainedConfig, method: BudgetedMethod, stats: ItemStats,
                    item: VisualInput) -> list[tuple[int, int]]:
    """(part size, tokens kept) of every part a budgeted method selects in (none when it keeps all)."""
    n = stats.content_before
    k = method.budget.tokens_for(n)
    if k >= n:
        return []
    parts, shares = [n], [k]
    if stats.parts:  # the allocation recorded its split (the only way for "thumbnail": it follows attention)
        parts, shares = [size for size, _ in stats.parts], [kept for _, kept in stats.parts]
    elif method.allocation != "global":
        parts = _part_sizes(config, item, n, per_frame=method.allocation == "per_frame")
        shares = split_budget(k, parts)
    return [(size, share) for size, share in zip(parts, shares) if 0 < share < size]


def _divprune_flops(config: PreTrainedConfig, method: DivPrune, stats: ItemStats, item: VisualInput) -> float:
    """The N x N cosine similarity matmul of every part the method selects in."""
    d = config.get_text_config().hidden_size
    return sum(_linear(size, d, size) for size, _ in _selected_parts(config, method, stats, item))


def _vision_info(config: PreTrainedConfig) -> VisionInfo:
    return qwen_vision_info(config) if config.model_type in QWEN else llava_vision_info(config)


def _attention_capture_flops(config: PreTrainedConfig, method: Method, item: VisualInput) -> float:
    """The vision attention a method asks for (``vtr.vision.attention``): q/k projections of the requested
    layer and the score matmul of the requested query rows, per attention sequence."""
    vc = config.vision_config
    total = 0.0
    for request in method.attention_requests(_vision_info(config)).values():
        if config.model_type in QWEN:
            d = _qwen_vision_width(config)
            frame = item.height * item.width
            windowed = config.model_type == "qwen2_5_vl" and request.layer not in vc.fullatt_block_indexes
            sequences = _window_sizes(vc, item.height, item.width) if windowed else [frame]
            total += _linear(item.patches, d, 3 * d) + item.frames * sum(
                _scores(vc.num_heads, d // vc.num_heads, s if request.query == "received" else 1, s)
                for s in sequences)
        else:
            d, heads, seq = vc.hidden_size, vc.num_attention_heads, _tokens_per_frame(config, item)
            queries = seq if request.query == "received" else 1
            total += item.frames * (2 * _linear(seq, d, d) + _scores(heads, d // heads, queries, seq))
    return total


def _visionzip_flops(config: PreTrainedConfig, method: VisionZip, stats: ItemStats, item: VisualInput) -> float:
    """Key similarity of the remaining tokens to the contextual targets (``vtr.methods.visionzip``)."""
    vc = config.vision_config
    head_dim = (_qwen_vision_width(config) // vc.num_heads if config.model_type in QWEN
                else vc.hidden_size // vc.num_attention_heads)
    total = 0.0
    for size, k in _selected_parts(config, method, stats, item):
        contextual = min(round(k * method.contextual), k - 1)
        contextual = min(contextual, size - (k - contextual))
        total += _linear(size - (k - contextual) - contextual, head_dim, contextual)
    return total


def _holitom_flops(config: PreTrainedConfig, stats: ItemStats, item: VisualInput) -> float:
    """DPC-KNN's distance matmul in every segment that clusters (``vtr.methods.holitom``), read off the
    provenance: a static merged token stands for its members in every frame of its segment."""
    if item.modality != "video" or not stats.provenance:
        return 0.0
    provenance = torch.tensor(stats.provenance)
    per_frame = provenance.numel() // item.frames
    tokens = (provenance >= 0).nonzero().squeeze(1)
    outputs, frames = provenance[tokens], tokens // per_frame
    n_out = int(outputs.max()) + 1 if outputs.numel() else 0
    first = torch.full((n_out,), item.frames).scatter_reduce(0, outputs, frames, "amin")
    last = torch.full((n_out,), -1).scatter_reduce(0, outputs, frames, "amax")
    size = torch.bincount(outputs, minlength=n_out)
    static = last > first
    d = config.get_text_config().hidden_size
    total = 0.0
    for start in first[static].unique().tolist():
        in_segment = static & (first == start)
        width = int(last[in_segment][0]) - start + 1
        n_static, clusters = int(size[in_segment].sum()) // width, int(in_segment.sum())
        if clusters < n_static:
            total += _linear(n_static, d, n_static)
    return total


def _layer_method_flops(config: PreTrainedConfig, method: LayerMethod, sample: SampleStats) -> float:
    """Score recompute (``vtr.llm.scores``) and HoliTom's similarity at layer K, per K. The recompute
    projects the tokens layer K-1 saw, with layer K-1's q/k or (PDrop's reference scoring) layer K's: the
    same shapes either way; PDrop's renumbered rotary positions are elementwise (no matmul)."""
    if not sample.visual_per_layer:  # no visual tokens: the in-LLM stage did not run
        return 0.0
    d, heads, kv_heads, head_dim = _text_dims(config)
    num_layers = config.get_text_config().num_hidden_layers
    visual, tokens = sample.visual_per_layer, tokens_per_layer(sample, num_layers)
    total = 0.0
    for k in method.check_layers(num_layers):
        n = tokens[k - 1]
        queries = 1 if method.query == "last" else n - visual[k - 1]
        total += _linear(queries, d, heads * head_dim) + _linear(n, d, kv_heads * head_dim)
        total += _scores(heads, head_dim, queries, n)
        if isinstance(method, HoliTomInner) and visual[k] < visual[k - 1]:  # it merges only what was dropped
            total += _linear(n, d, n)
    return total


def _merging_flops(config: PreTrainedConfig, method: VisionMethod, item: VisualInput) -> float:
    """The A x B key similarity after every merging layer whose matcher is active (``vtr.vision.merging``)."""
    if not item.encoder_tokens:
        return 0.0
    vc = config.vision_config
    merge_layers, dropped = llava_merge_target_shape(config)
    tokens = item.encoder_tokens[0]
    matcher = method.matcher(EncoderGeometry(tokens, tokens - dropped, merge_layers, vc.num_hidden_layers,
                                             llava_protected(config)))
    head_dim = vc.hidden_size // vc.num_attention_heads
    return item.frames * sum(2.0 * math.ceil(n / 2) * (n // 2) * head_dim
                             for layer, n in enumerate(item.encoder_tokens[:merge_layers])
                             if matcher.active(layer) and n >= 2 + llava_protected(config))


def reduction_flops(
    config: PreTrainedConfig,
    sample: SampleStats,
    visual: Sequence[VisualInput],
    pre_llm: Method | None,
    in_llm: LayerMethod | None,
    vision: VisionMethod | None = None,
) -> float:
    """vtr's own FLOPs for one recorded sample; ``visual`` in the order of ``sample.items`` (with the
    encoder token counts a vision-stage ``vision`` method recorded, see ``call_flops``)."""
    modalities = [item.modality for item in visual]
    if modalities != [item.modality for item in sample.items]:
        raise ValueError(f"the visual inputs {modalities} do not match the recorded items {sample.items}")
    total = 0.0
    if isinstance(pre_llm, DivPrune):
        total += sum(_divprune_flops(config, pre_llm, s, item) for s, item in zip(sample.items, visual))
    if pre_llm is not None:  # hiprune, visionzip, holitom, allocation="thumbnail" (images)
        total += sum(_attention_capture_flops(config, pre_llm, item) for item in visual
                     if pre_llm.wants_attention(item.modality))
    if isinstance(pre_llm, HoliTom):
        total += sum(_holitom_flops(config, s, item) for s, item in zip(sample.items, visual))
    if isinstance(pre_llm, VisionZip):
        total += sum(_visionzip_flops(config, pre_llm, s, item) for s, item in zip(sample.items, visual))
    if in_llm is not None:
        total += _layer_method_flops(config, in_llm, sample)
    if vision is not None:
        total += sum(_merging_flops(config, vision, item) for item in visual)
    return total


# ---------------------------------------------------------------------- geometry of a call
def _llava_images(config: PreTrainedConfig, inputs: dict[str, Any]) -> list[VisualInput]:
    pixels = inputs.get("pixel_values")
    if pixels is None:
        return []
    patch = config.vision_config.patch_size
    height, width = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    if config.model_type == "llava":
        return [VisualInput("image", 1, height, width)] * pixels.shape[0]
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    sizes = inputs["image_sizes"]
    counts = inputs.get("batch_num_images") if config.model_type == "llava_onevision" else None
    patched = [True] * len(sizes) if counts is None else [n == 1 for n in counts.tolist() for _ in range(n)]
    crops = [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
             if whole else 1 for size, whole in zip(sizes, patched)]
    return [VisualInput("image", n, height, width) for n in crops]


def _items(config: PreTrainedConfig, modality: str, inputs: dict[str, Any]) -> list[VisualInput]:
    """Every image or video of the batch, in the order the model scatters them (row-major)."""
    if config.model_type in QWEN:
        grid = inputs.get(f"{modality}_grid_thw")
        return [] if grid is None else [VisualInput(modality, *map(int, thw)) for thw in grid.tolist()]
    if modality == "image":
        return _llava_images(config, inputs)
    pixels = inputs.get("pixel_values_videos")
    if pixels is None:
        return []
    patch = config.vision_config.patch_size
    frames, height, width = pixels.shape[1], pixels.shape[-2] // patch, pixels.shape[-1] // patch
    return [VisualInput("video", frames, height, width)] * pixels.shape[0]


def _item_rows(config: PreTrainedConfig, modality: str, items: list[VisualInput], ids: Tensor,
               mask: Tensor) -> list[int]:
    """The batch row of each item of an unwrapped call: Qwen-VL items take their merged-patch count of
    placeholders in row-major order; a LLaVA-family item is one run of consecutive placeholders."""
    hits = (ids == getattr(config, f"{modality}_token_id")) & mask.bool()
    if config.model_type in QWEN:
        sizes = [item.patches // config.vision_config.spatial_merge_size ** 2 for item in items]
        per_row = hits.sum(1).tolist()
    else:
        sizes = [1] * len(items)
        starts = hits.clone()
        starts[:, 1:] &= ~hits[:, :-1]
        per_row = starts.sum(1).tolist()
    if sum(per_row) != sum(sizes):
        raise ValueError(
            f"cannot tell which prompt each of the {len(items)} {modality} input(s) belongs to (adjacent "
            f"placeholder runs?); wrap the model with vtr.wrap(model, 'none') and run it: its stats say"
        )
    rows, row, left = [], -1, 0
    for size in sizes:
        while left <= 0:
            row += 1
            left = per_row[row]
        if size > left:
            raise ValueError(f"a {modality} input's placeholder tokens run over the end of prompt {row}")
        rows.append(row)
        left -= size
    return rows


def visual_inputs(config: PreTrainedConfig, inputs: dict[str, Any],
                  recorded: CallStats | None = None) -> list[list[VisualInput]]:
    """Per batch row, its images then its videos (the order ``vtr.stats`` records them in).

    ``recorded``: the stats of a wrapped model's call on ``inputs``, which say how many items each row
    has; without them the rows are read off the placeholder tokens.
    """
    _check_supported(config)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    rows: list[list[VisualInput]] = [[] for _ in range(ids.shape[0])]
    for modality in ("image", "video"):
        items = _items(config, modality, inputs)
        if recorded is not None:
            owners = [i for i, s in enumerate(recorded.samples) for item in s.items if item.modality == modality]
        else:
            owners = _item_rows(config, modality, items, ids, mask) if items else []
        if len(owners) != len(items):
            raise ValueError(f"the inputs hold {len(items)} {modality} input(s), the recorded call {len(owners)}")
        for row, item in zip(owners, items):
            rows[row].append(item)
    return rows


def call_flops(model: torch.nn.Module, inputs: dict[str, Any], new_tokens: int = 0,
               logits: str = "last", config: PreTrainedConfig | None = None) -> list[FlopsBreakdown]:
    """FLOPs of the model's last call on ``inputs`` (the processor's unreduced outputs), one per row.

    A wrapped model's reduction is read from ``vtr.stats(model)`` and its configured methods; an
    unwrapped model is costed unreduced. ``new_tokens``: tokens generated (0 for a plain forward);
    ``logits``: ``"all"`` for ``forward`` (every position), ``"last"`` for ``generate``. ``config``: cost
    the call with another model's dimensions (same geometry and depth), e.g. a real checkpoint's while
    ``model`` is its narrow shape proxy (``vtr.measure.presets.shape_proxy``).
    """
    config = config or model.config
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    lengths = [ids.shape[1]] * ids.shape[0] if mask is None else mask.sum(1).tolist()
    num_layers = config.get_text_config().num_hidden_layers
    if not is_wrapped(model):
        return [model_flops(config, items, [n] * num_layers, new_tokens, logits)
                for items, n in zip(visual_inputs(config, inputs), lengths)]
    state = _state(model)
    recorded = state.last_stats
    if recorded is None or [s.prompt_before for s in recorded.samples] != lengths:
        raise ValueError("vtr.stats(model) does not describe a call on these inputs; run the wrapped model on "
                         "them first")
    visual, pipeline = visual_inputs(config, inputs, recorded), state.pipeline
    in_llm = None if pipeline.in_llm is None else pipeline.in_llm.method
    breakdowns = []
    for items, sample in zip(visual, recorded.samples):
        items = [_as_merged(item, stats) for item, stats in zip(items, sample.items)]
        virtual = sample.prompt_before if pipeline.unmerging is not None else None
        breakdowns.append(model_flops(
            config, items, tokens_per_layer(sample, num_layers), new_tokens, logits,
            reduction_flops(config, sample, items, pipeline.pre_llm, in_llm, pipeline.vision), virtual))
    return breakdowns


def _as_merged(item: VisualInput, stats: ItemStats) -> VisualInput:
    """``item`` with the encoder token counts a vision-stage merge recorded (unchanged without one)."""
    if not stats.vision_per_layer:
        return item
    return dataclasses.replace(item, encoder_tokens=stats.vision_per_layer, projected=stats.vision_projected)


# ---------------------------------------------------------------------- presentation
def format_breakdown(breakdowns: FlopsBreakdown | Sequence[FlopsBreakdown], unit: str = "auto") -> str:
    """A table of FLOPs per component (rows) and sample (columns), in ``unit`` ("M", "G", "T" FLOPs;
    "auto" picks the largest that keeps the biggest total at 1 or more); one sample also gets shares."""
    samples = [breakdowns] if isinstance(breakdowns, FlopsBreakdown) else list(breakdowns)
    if unit == "auto":
        biggest = max((b.total for b in samples), default=0.0)
        unit = next((u for u, scale in UNITS.items() if biggest >= scale), "M")
    if unit not in UNITS:
        raise ValueError(f"unit must be 'auto' or one of {list(UNITS)}, got {unit!r}")
    scale = UNITS[unit]
    header = [f"{unit}FLOPs"] + [f"sample {i}" for i in range(len(samples))] + (["share"] if len(samples) == 1 else [])
    lines = []
    for name in COMPONENTS + ("total",):
        values = [getattr(b, name) for b in samples]
        row = [name.replace("_", " ")] + [f"{v / scale:,.3f}" for v in values]
        if len(samples) == 1:
            row.append(f"{100 * values[0] / samples[0].total:.1f}%" if samples[0].total else "-")
        lines.append(row)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in [header] + lines)
