"""Analytical FLOPs of one call, per sample: vision encoder, projector, LLM prefill per decoder layer,
decoding, and vtr's own reduction work, from the model config and the call's geometry (never by
running the model).

The counting rules are those of ``torch.utils.flop_counter.FlopCounterMode`` (``vtr.costs.counting``),
so that the two can be compared (the tests do, for every supported family):

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

Who knows what: each family's costs (``vtr.adapters.costs``, next to its adapter) read the visual inputs
off the processor outputs and cost the vision tower and projector, with that family's assumptions in
its module docstring; the decoder is data read from the text config (``vtr.costs.decoder``: attention
kinds, sliding windows, mixtures of experts); every method costs its own work (``Method.own_flops``,
called with a ``vtr.methods.cost.SampleWork``). This module only assembles and sums, the same way for
every family and method. Assumptions, each the behaviour of transformers 5.x:

* One breakdown per batch row, as if the row ran alone: padding and pad slots cost nothing (a row with
  several AnyRes images pads them all to the longest in the encoder, which this model does not count).
* Decoder layer l of the prefill sees ``prompt_after`` tokens, minus the visual tokens an in-LLM
  method dropped before it. ``logits="all"`` applies the LM head to every token leaving the last layer
  (``forward``), ``"last"`` to the last one only (``generate``). With virtual token unmerging
  (``vtr.llm.unmerge``) every attention module (projections and attention) runs at the original prompt
  length, the MLPs at the merged one, the KV cache holds the original length and the LM head of
  ``forward`` sees every original position.
* ``new_tokens`` counts the tokens generated: the first comes from the prefill, each later one costs
  a decoding step of one token against every cached key of each layer plus the LM head.
* ``reduction`` holds vtr's own matmuls, each method's ``own_flops``: e.g. DivPrune's cosine-similarity
  matrix, an in-LLM method's score recompute at layer K-1, HoliTom's DPC-KNN distances, the vision
  attention a method asks for (per attention sequence, each request on its own, as vtr computes them),
  a vision-stage merge's key similarities (which run inside the encoder, so a flop counter books them
  under the vision tower). Keep-all, random and pooling multiply nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedConfig

from vtr.adapters import FamilyCosts, family_costs
from vtr.api import _state, is_wrapped
from vtr.costs.counting import VisualInput
from vtr.methods import LayerMethod, Method, VisionMethod
from vtr.methods.cost import SampleWork, tokens_per_layer
from vtr.stats import CallStats, ItemStats, SampleStats

LOGITS = ("last", "all")
COMPONENTS = ("vision", "projector", "reduction", "llm_prefill", "decode")
UNITS = {"T": 1e12, "G": 1e9, "M": 1e6}

__all__ = ["FlopsBreakdown", "VisualInput", "call_flops", "decode_flops", "decoder_layer_flops", "format_breakdown",
           "model_flops", "projector_flops", "reduction_flops", "tokens_per_layer", "vision_flops", "visual_inputs"]


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


# ---------------------------------------------------------------------- vision encoder and projector
def vision_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    """The vision encoder's FLOPs for one image or video."""
    return family_costs(config).vision_flops(item)


def projector_flops(config: PreTrainedConfig, item: VisualInput) -> float:
    """The projector's (LLaVA) or patch mergers' (Qwen-VL) FLOPs for one image or video."""
    return family_costs(config).projector_flops(item)


# ---------------------------------------------------------------------- the LLM
def decoder_layer_flops(config: PreTrainedConfig, queries: float, keys: float, mlp_rows: float | None = None,
                        layer: int = 0) -> float:
    """Decoder layer ``layer`` running ``queries`` tokens against ``keys`` keys (prefill: both = its tokens).

    ``mlp_rows``: tokens the MLP sees when they are fewer than the attention's (virtual unmerging).
    """
    return family_costs(config).decoder().layer_flops(layer, queries, keys, mlp_rows)


def decode_flops(config: PreTrainedConfig, llm_tokens: Sequence[int], new_tokens: int) -> float:
    """Decoding steps 1 .. ``new_tokens - 1``: step j runs one token against ``llm_tokens[l] + j`` keys
    at layer l (at most a sliding window's), then the LM head."""
    return family_costs(config).decoder().decode_flops(llm_tokens, new_tokens)


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
    costs = family_costs(config)
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
    decoder = costs.decoder()
    num_layers = len(decoder.layers)
    if len(llm_tokens) != num_layers:
        raise ValueError(f"llm_tokens needs one count per decoder layer ({num_layers}), got {len(llm_tokens)}")
    if virtual_tokens is None:
        per_layer = tuple(decoder.layer_flops(l, decoder.prefill_queries(l, n, logits == "last"), n)
                          for l, n in enumerate(llm_tokens))
        cached = list(llm_tokens)
    else:
        per_layer = tuple(decoder.layer_flops(l, virtual_tokens, virtual_tokens, n) for l, n in enumerate(llm_tokens))
        cached = [virtual_tokens] * num_layers
    head_rows = cached[-1] if logits == "all" else 1
    return FlopsBreakdown(
        vision=sum(costs.vision_flops(item) for item in visual),
        projector=sum(costs.projector_flops(item) for item in visual),
        llm_prefill=sum(per_layer) + decoder.lm_head(head_rows),
        llm_prefill_per_layer=per_layer,
        decode=decoder.decode_flops(cached, new_tokens),
        reduction=reduction,
    )


# ---------------------------------------------------------------------- vtr's own work
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
    costs = family_costs(config)
    work = SampleWork(sample, tuple(visual), costs, costs.decoder())
    return sum(method.own_flops(work) for method in (pre_llm, in_llm, vision) if method is not None)


# ---------------------------------------------------------------------- geometry of a call
def _item_rows(costs: FamilyCosts, modality: str, items: list[VisualInput], ids: Tensor, mask: Tensor) -> list[int]:
    """The batch row of each item of an unwrapped call, off the placeholder tokens: each item takes its
    family's units of placeholders (``FamilyCosts.placeholder_units``), in row-major order."""
    hits = (ids == getattr(costs.config, f"{modality}_token_id")) & mask.bool()
    sizes, per_row = costs.placeholder_units(items, hits)
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
    costs = family_costs(config)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    rows: list[list[VisualInput]] = [[] for _ in range(ids.shape[0])]
    for modality in ("image", "video"):
        items = costs.items(modality, inputs)
        if recorded is not None:
            owners = [i for i, s in enumerate(recorded.samples) for item in s.items if item.modality == modality]
        else:
            owners = _item_rows(costs, modality, items, ids, mask) if items else []
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
