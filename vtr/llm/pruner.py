"""The layer-K engine: drop (or merge) visual tokens at decoder layers, exactly, batched, under SDPA.

Hooks on the decoder layers (installed by ``wrap``, removed by ``unwrap``) do all the work; no model
code is replaced. During a full pass (prefill, or every step of an uncached generate) the hook of a
pruning layer K:

1. scores the candidates with the attention the query tokens paid them at layer K-1, recomputed from
   that layer's q/k (``vtr.llm.scores``), causal and under any attention implementation;
2. asks the method which candidates stay (and for merged hidden states);
3. keeps, per row, the kept columns in order; rows are left-filled with masked pad slots to a common
   length;

and every layer from K on gets the model's full-length rotary cos/sin, position ids and mask gathered at
its kept columns. Layers from K on therefore cache fewer keys. On a cached step the new tokens' queries
are untouched and only the key axis of the mask is gathered (kept prompt columns + every new token).

Only the prompt's columns are candidates; tokens after the prompt (those an uncached generate appends)
are always kept and the scores come from the prompt alone, so an uncached recompute makes the same
choice as the cached prefill.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vtr.errors import ReductionError
from vtr.llm.cache import fixed_length_cache_error, passed_cache
from vtr.llm.masks import bidirectional_mask, decode_mask, full_pass_mask
from vtr.llm.scores import attention_to_keys
from vtr.measure.timing import section
from vtr.ops.packing import left_packed_index
from vtr.methods.layer import LayerInput, LayerMethod


@dataclass
class PromptRoles:
    """Per column of the prompt the model receives: what each token is, for the in-LLM stage."""

    group: Tensor  # (B, L) visual input (unique in the batch) of each content token, -1 elsewhere
    visual: Tensor  # (B, L) content or structural visual token
    attended: Tensor  # (B, L) the attention mask (False on padding)
    entry_counts: Tensor  # (G,) content tokens of each visual input

    @classmethod
    def from_columns(cls, group: Tensor, structural: Tensor, attention_mask: Tensor) -> "PromptRoles":
        groups = int(group.max()) + 1 if group.numel() else 0
        counts = torch.bincount(group[group >= 0], minlength=groups)
        return cls(group, (group >= 0) | structural, attention_mask.bool(), counts)


@dataclass
class _Kept:
    """The columns a range of layers sees: full-pass column per current column; False on pad slots."""

    index: Tensor  # (B, N)
    valid: Tensor  # (B, N)


@dataclass
class LayerRun:
    """One reduced call (a forward with pixels, or a whole generate) and the cache it fills."""

    roles: PromptRoles
    accepts_full_passes: bool = True
    cache: weakref.ref | None = None  # the cache the prefill filled: its later steps are ours
    full_len: int = 0
    kept: dict[int, _Kept] = field(default_factory=dict)  # first layer of a range -> its columns
    visual_per_layer: list[Tensor] = field(default_factory=list)  # (B,) visual tokens seen by each layer
    captured: dict[int, tuple[Tensor, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    current_layer: int = -1  # the decoder layer running now (for injections between layers)

    def kept_at(self, layer: int) -> _Kept | None:
        starts = [k for k in self.kept if k <= layer]
        return self.kept[max(starts)] if starts else None

    def final_index(self) -> Tensor | None:
        """(B, N) full-pass column of every output column of the last full pass, -1 on pad slots."""
        if not self.kept:
            return None
        last = self.kept[max(self.kept)]
        return last.index.masked_fill(~last.valid, -1)


class LayerPruner:
    """Hooks of one in-LLM method on one model's decoder layers."""

    def __init__(self, decoder: nn.Module, method: LayerMethod, attn_implementation: str) -> None:
        self.layers = decoder.layers
        self.method = method
        self.num_layers = len(self.layers)
        self.prune_at = method.check_layers(self.num_layers)
        self.flash = str(attn_implementation).startswith("flash")
        self.quirks = bool(getattr(method, "reference_quirks", False))
        self.run: LayerRun | None = None
        self._handles = []
        for i in range(self.prune_at[0], self.num_layers):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        for k in self.prune_at:
            attention = self.layers[k - 1].self_attn
            self._handles.append(attention.register_forward_pre_hook(self._capture_hook(k), with_kwargs=True))
            if self.quirks:
                self._handles.append(self.layers[k - 1].register_forward_pre_hook(self._quirk_hook(k - 1),
                                                                                  with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ hooks
    def _full_pass(self, kwargs: dict[str, Any], layer: int) -> bool:
        run = self.run
        if run is None or not run.accepts_full_passes:
            return False
        cache = passed_cache(kwargs)
        return cache is None or cache.get_seq_length(layer) == 0

    def _capture_hook(self, k: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self.run is not None and self._full_pass(kwargs, k - 1):
                states = args[0] if args else kwargs["hidden_states"]
                self.run.captured[k] = (states, kwargs["position_embeddings"])
            return None

        return hook

    def _quirk_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if not self._full_pass(kwargs, layer):
                return None
            states = args[0] if args else kwargs["hidden_states"]  # layer K-1 < K: still full length
            valid = self._expanded(self.run.roles.attended, states.shape[0], states.shape[1], True)
            return args, {**kwargs, "attention_mask": bidirectional_mask(kwargs.get("attention_mask"), valid,
                                                                         self.flash)}

        return hook

    def _layer_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self.run is None:
                return None
            with section("in_llm"):
                return self._at_layer(layer, args, kwargs)

        return hook

    def _at_layer(self, layer: int, args: tuple, kwargs: dict[str, Any]):
        """The new (args, kwargs) of decoder layer ``layer`` (``None`` = leave the call as it is)."""
        run = self.run
        states = args[0] if args else kwargs["hidden_states"]
        cache = passed_cache(kwargs)
        run.current_layer = layer
        if self._full_pass(kwargs, layer):
            if layer == self.prune_at[0]:
                self._begin_full_pass(states, cache)
            if layer in self.prune_at:
                states = self._prune(layer, states)
            kwargs = self._full_pass_kwargs(layer, kwargs)
        elif cache is not None and run.cache is not None and run.cache() is cache and run.kept:
            kwargs = self._decode_kwargs(layer, kwargs, cache, states.shape[1])
        else:
            return None
        if args:
            return (states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states}

    # ------------------------------------------------------------------ full passes
    def _begin_full_pass(self, states: Tensor, cache: Any) -> None:
        run = self.run
        batch, length = states.shape[:2]
        prompt_len = run.roles.group.shape[1]
        if length < prompt_len or batch % run.roles.group.shape[0]:
            raise ReductionError(
                f"the in-LLM stage expected the {prompt_len}-token prompt it was set up for, got a pass of "
                f"{batch}x{length} tokens; call generate()/forward() with the inputs vtr reduced"
            )
        if cache is not None and not isinstance(cache, DynamicCache):  # wrap refuses them at the call already
            raise fixed_length_cache_error(f"a {type(cache).__name__}")
        run.full_len, run.kept = length, {}
        run.cache = None if cache is None else weakref.ref(cache)  # never keep a finished KV cache alive
        run.visual_per_layer = []

    def _expanded(self, values: Tensor, batch: int, length: int, appended) -> Tensor:
        """A prompt-shaped (B0, L0) map for a pass of ``length``: rows repeated for beams, appended columns
        (tokens an uncached generate added after the prompt) set to ``appended``."""
        values = values.repeat_interleave(batch // values.shape[0], dim=0)
        extra = length - values.shape[1]
        if extra:
            values = torch.cat([values, values.new_full((batch, extra), appended)], dim=1)
        return values

    def _current(self, values: Tensor, appended, pad_slot, layer: int, batch: int) -> Tensor:
        """A prompt map in the columns layer ``layer`` sees during this full pass."""
        full = self._expanded(values, batch, self.run.full_len, appended)
        kept = self.run.kept_at(layer)
        if kept is None:
            return full
        return full.gather(1, kept.index).masked_fill(~kept.valid, pad_slot)

    def _prune(self, layer: int, states: Tensor) -> Tensor:
        run, roles = self.run, self.run.roles
        batch, length = states.shape[:2]
        prompt_cols = length - (run.full_len - roles.group.shape[1])  # appended columns stay at the end
        group = self._current(roles.group, -1, -1, layer - 1, batch)
        attended = self._current(roles.attended, True, False, layer - 1, batch)
        scores = self._scores(layer, group, attended, prompt_cols)
        step = LayerInput(hidden=states, scores=scores, group=group, stage=self.prune_at.index(layer),
                          entry_counts=roles.entry_counts, num_layers=self.num_layers)
        decision = self.method.select(step)
        previous = run.kept_at(layer - 1)
        slot_valid = previous.valid if previous is not None else torch.ones_like(attended)
        keep = slot_valid & ((group < 0) | decision.keep)
        local = left_packed_index(keep)
        hidden = decision.hidden if decision.hidden is not None else states
        gathered = hidden.gather(1, local.clamp_min(0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        base = previous.index if previous is not None else torch.arange(length, device=states.device).expand(batch, -1)
        run.kept[layer] = _Kept(base.gather(1, local.clamp_min(0)), local >= 0)
        return gathered

    def _scores(self, layer: int, group: Tensor, attended: Tensor, prompt_cols: int) -> Tensor:
        captured = self.run.captured.pop(layer, None)
        if captured is None:
            raise ReductionError(f"no layer {layer - 1} attention input was captured for {self.method.describe()}")
        states, position_embeddings = captured
        batch = states.shape[0]
        if self.method.query == "last":
            queries = torch.full((batch, 1), prompt_cols - 1, device=states.device)
            weight = torch.ones(batch, 1, device=states.device)
        else:  # every attended text token of the prompt
            visual = self._current(self.run.roles.visual, False, False, layer - 1, batch)
            text = attended & ~visual
            text[:, prompt_cols:] = False
            packed = left_packed_index(text)
            queries, weight = packed.clamp_min(0), (packed >= 0).float()
            weight = weight / weight.sum(1, keepdim=True).clamp_min(1)
        with torch.no_grad():
            return attention_to_keys(self.layers[layer - 1].self_attn, states, position_embeddings, queries,
                                     weight, attended)

    def _full_pass_kwargs(self, layer: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        kept = self.run.kept_at(layer)
        kwargs = dict(kwargs)
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (_gather_tokens(cos, kept.index), _gather_tokens(sin, kept.index))
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, Tensor) and position_ids.shape[-1] == self.run.full_len:
            kwargs["position_ids"] = _gather_last(position_ids, kept.index)
        kwargs["attention_mask"] = full_pass_mask(kwargs.get("attention_mask"), kept.index, kept.valid, self.flash)
        if len(self.run.visual_per_layer) == layer - self.prune_at[0]:
            visual = self._current(self.run.roles.visual, False, False, layer, kept.index.shape[0])
            self.run.visual_per_layer.append(visual.sum(1))
        return kwargs

    def injection_rows(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Translate a full-length injection mask for the sequence leaving the current layer.

        Some families add per-token embeddings between decoder layers at the masked positions
        (Qwen3-VL's deepstack features, given in row-major order of the mask). Returns the mask over the
        current columns and, for each of its True entries, the row of the original embeddings.
        """
        kept = self.run.kept_at(self.run.current_layer)
        flat_rank = (positions.flatten().long().cumsum(0) - 1).view_as(positions)
        positions = positions.expand(kept.index.shape[0], -1) if positions.shape[0] == 1 else positions
        current = positions.gather(1, kept.index) & kept.valid
        return current, flat_rank.gather(1, kept.index)[current]

    # ------------------------------------------------------------------ cached steps
    def _decode_kwargs(self, layer: int, kwargs: dict[str, Any], cache: Any, queries: int) -> dict[str, Any]:
        run = self.run
        kept = run.kept_at(layer)
        keys = cache.get_seq_length(0)  # layer 0 already holds this step's tokens: the mask's key count
        new = torch.arange(run.full_len, keys, device=kept.index.device).expand(kept.index.shape[0], -1)
        key_index = torch.cat([kept.index, new], dim=1)
        key_valid = torch.cat([kept.valid, torch.ones_like(new, dtype=torch.bool)], dim=1)
        return {**kwargs, "attention_mask": decode_mask(kwargs.get("attention_mask"), key_index, key_valid, queries,
                                                        self.flash)}


def _gather_tokens(values: Tensor, index: Tensor) -> Tensor:
    """Gather the token axis (dim 1) of (B|1, L, ...) at ``index`` (B, N)."""
    values = values.expand(index.shape[0], *values.shape[1:])
    shape = (*index.shape, *values.shape[2:])
    return values.gather(1, index.view(*index.shape, *([1] * (values.dim() - 2))).expand(shape))


def _gather_last(values: Tensor, index: Tensor) -> Tensor:
    """Gather the last axis of position ids shaped (B|1, L) or (R, B|1, L) at ``index`` (B, N)."""
    if values.dim() == 2:
        return values.expand(index.shape[0], -1).gather(1, index)
    return values.expand(values.shape[0], index.shape[0], -1).gather(2, index.expand(values.shape[0], -1, -1))
