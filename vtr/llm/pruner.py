"""The layer-K engine: drop (or merge) visual tokens at decoder layers, exactly, batched, under SDPA.

Hooks on the decoder layers (installed by ``wrap``, removed by ``unwrap``) do all the work; no model
code is replaced. During a full pass (prefill, or every step of an uncached generate) the hook of a
pruning layer K:

1. scores the candidates with the attention the query tokens paid them at layer K-1, recomputed from
   that layer's q/k (``vtr.llm.scores``), causal and under any attention implementation; or, for a
   method that ``scores_own_layer`` (PDrop's reference), with layer K's own input norm and q/k applied
   to the hidden states entering layer K, at the positions layer K-1 used;
2. asks the method which candidates stay (and for merged hidden states);
3. keeps, per row, the kept columns in order; rows are left-filled with masked pad slots to a common
   length;

and every layer from K on gets the model's full-length rotary cos/sin, position ids and mask gathered at
its kept columns. Layers from K on therefore cache fewer keys. On a cached step the new tokens' queries
are untouched and only the key axis of the mask is gathered (kept prompt columns + every new token).

A method that ``renumbers_positions`` (PDrop's reference) moves every kept token down by the number of
real tokens dropped before it in its row (pad slots and padding do not count), on every rotary axis:
the model's own rotary module is evaluated on those positions once per stage and pass, and the new
tokens of a cached step (or the appended tokens of an uncached pass) move down by everything their row
dropped, so decoding continues from the renumbered positions and an uncached recompute still equals
the cached generate.

The gathered inputs change only where the kept columns do (at a pruning layer) or where the model hands a
layer different inputs (a sliding-window mask, a new decode step): they are gathered once per such change
and reused by the following layers (``_LayerInputs``), so a pass costs a few gathers per stage, not per
layer.

Sliding-window layers (Gemma 3's local layers; ``Adapter.sliding_windows``) keep their window in *original*
positions after a prune: a kept token attends the kept tokens less than ``window`` original positions back,
exactly what it attended unpruned minus the dropped keys (and kept image tokens of one image still attend
each other where the model's bidirectional block let them). A full pass gets that by gathering the model's
own sliding mask; a cached step builds it (``vtr.llm.masks.window_decode_mask``), because the layer's
sliding cache holds its last ``window - 1`` kept columns, not the positions the model sized its mask for.

On a hybrid stack (recurrent layers such as Qwen3.5's GatedDeltaNet between full-attention layers) only
full-attention layers can score: a pruning layer K takes its scores from the last full-attention layer
before it (at or before K for a method that ``scores_own_layer``), and a K without one, or whose scoring
layer sits before an earlier stage, is refused at wrap time. Recurrent layers from K on run on the
shortened sequence: their padding mask is gathered at the kept columns (pad slots masked, so the state
never sees them) and their recurrent state is built from the kept tokens only; on a cached step they
hold no per-token keys and run as the model runs them.

Only the prompt's columns are candidates; tokens after the prompt (those an uncached generate appends)
are always kept and the scores come from the prompt alone, so an uncached recompute makes the same
choice as the cached prefill.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from vtr.errors import ReductionError
from vtr.llm.cache import FullPasses, fixed_length_cache_error, passed_cache
from vtr.llm.masks import bidirectional_mask, decode_mask, full_pass_mask, window_decode_mask
from vtr.llm.scores import attention_to_keys
from vtr.measure.timing import section
from vtr.ops.packing import left_packed
from vtr.methods.layer import LayerInput, LayerMethod


@dataclass
class PromptRoles:
    """Per column of the prompt the model receives: what each token is, for the in-LLM stage.

    The maps a stage may not need (every visual token, the attention mask as bools) are made on first use."""

    group: Tensor  # (B, L) visual input (unique in the batch) of each content token, -1 elsewhere
    structural: Tensor  # (B, L) structural visual token (LLaVA-NeXT/OneVision newlines)
    attention_mask: Tensor  # (B, L) as the model receives it
    entry_counts: tuple[int, ...]  # (G,) content tokens of each visual input, as the engine recorded them
    padded: bool  # some column is padding (the mask has a zero), as the engine recorded it

    @functools.cached_property
    def visual(self) -> Tensor:
        """(B, L) content or structural visual token."""
        return (self.group >= 0) | self.structural

    @functools.cached_property
    def attended(self) -> Tensor:
        """(B, L) the attention mask as bools (False on padding)."""
        return self.attention_mask.bool()


@dataclass
class _Kept:
    """The columns a range of layers sees: full-pass column per current column; False on pad slots.

    With renumbered positions, also how far each column's position moves down."""

    index: Tensor  # (B, N)
    valid: Tensor  # (B, N)
    full: bool  # no pad slots: every row kept N columns
    shift: Tensor | None = None  # (B, N) real tokens dropped before each column (0 on pad slots)
    dropped: Tensor | int | None = None  # (B,) real tokens each row dropped in all, so far (int: every row alike)

    def drops_per_row(self) -> Tensor | int:
        """``dropped`` shaped to move a (..., B, Q) block of positions."""
        return self.dropped if isinstance(self.dropped, int) else self.dropped.view(-1, 1)


class _LayerInputs:
    """Gathered layer inputs, reused while a layer's sources are the very objects they were made from.

    The key is the identity of the sources (kept columns, the model's cos/sin, mask, position ids); the
    sources themselves are held, so an identity is never reused by another tensor while its entry lives.
    Entries live for one epoch (a full pass, or one decode step: its cache length), so a long generate
    holds one step's masks, not every step's.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[tuple, Any]] = {}
        self._epoch: Any = None

    def get(self, epoch: Any, sources: tuple, make):
        if epoch != self._epoch:
            self.clear()
            self._epoch = epoch
        key = tuple(id(source) if isinstance(source, (Tensor, tuple, _Kept)) or source is None else source
                    for source in sources)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = (sources, make())
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()
        self._epoch = None


@dataclass
class LayerRun:
    """One reduced call (a forward with pixels, or a whole generate) and the cache it fills."""

    roles: PromptRoles
    accepts_full_passes: bool = True
    cache: weakref.ref | None = None  # the cache the prefill filled: its later steps are ours
    full_len: int = 0
    kept: dict[int, _Kept] = field(default_factory=dict)  # first layer of a range -> its columns
    counts: tuple[int, ...] = ()  # candidates each visual input has in the current range
    captured: dict[int, tuple[Tensor, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    current_layer: int = -1  # the decoder layer running now (for injections between layers)
    gathered: _LayerInputs = field(default_factory=_LayerInputs)
    rope_positions: Tensor | None = None  # what the model's rotary module got in the current pass or step
    # (range start, rotary kind) -> cos/sin
    renumbered: dict[tuple[int, str | None], tuple[Tensor, Tensor]] = field(default_factory=dict)

    def range_start(self, layer: int) -> int | None:
        """The pruning layer that set the columns ``layer`` sees (``None`` before the first)."""
        starts = [k for k in self.kept if k <= layer]
        return max(starts) if starts else None

    def kept_at(self, layer: int) -> _Kept | None:
        start = self.range_start(layer)
        return None if start is None else self.kept[start]

    def visual_per_layer(self, num_layers: int) -> Tensor:
        """(rows of the pass, layers from the first pruning layer on) visual tokens each layer saw in the last
        full pass. Counted on request (``vtr.stats``), not on the hot path."""
        starts = sorted(self.kept)
        per_range = torch.stack([
            (_prompt_map(self.roles.visual, kept.index.shape[0], self.full_len, False).to(kept.index.device)
             .gather(1, kept.index) & kept.valid).sum(1).cpu() for kept in map(self.kept.get, starts)], dim=1)
        ranges = [max(k for k in starts if k <= layer) for layer in range(starts[0], num_layers)]
        return per_range[:, [starts.index(k) for k in ranges]]

    def final_index(self) -> Tensor | None:
        """(B, N) full-pass column of every output column of the last full pass, -1 on pad slots."""
        if not self.kept:
            return None
        last = self.kept[max(self.kept)]
        return last.index.masked_fill(~last.valid, -1)


class LayerPruner:
    """Hooks of one in-LLM method on one model's decoder layers."""

    def __init__(self, decoder: nn.Module, method: LayerMethod, attn_implementation: str,
                 sliding_windows: tuple[int | None, ...] = (), rotary_kinds: tuple[str | None, ...] = (),
                 recurrent: frozenset[int] = frozenset(), gated_queries: bool = False,
                 cache_layers: tuple[int, ...] = ()) -> None:
        """``sliding_windows``: per layer, its window (``None`` for global attention); ``rotary_kinds``: the
        extra argument the text model's rotary module takes per layer; ``recurrent``: the decoder layers
        without attention (linear attention, which keeps a state instead of keys); ``gated_queries``: the
        attention's q projection also carries an output gate (Qwen3.5); ``cache_layers``: per layer, the layer
        whose cache it reads (KV-sharing layers: an earlier one; default: its own)."""
        self.layers = decoder.layers
        self.method = method
        self.num_layers = len(self.layers)
        self.full_passes = FullPasses(cache_layers, self.num_layers)
        self.prune_at = method.check_layers(self.num_layers)
        self.flash = str(attn_implementation).startswith("flash")
        self.windows = tuple(sliding_windows) + (None,) * (self.num_layers - len(sliding_windows))
        self.rotary_kinds = tuple(rotary_kinds) + (None,) * (self.num_layers - len(rotary_kinds))
        if self.flash and any(w is not None for w in self.windows[self.prune_at[0]:]):
            raise ValueError(f"{method.describe()} on sliding-window layers builds their masks itself, which flash "
                             f"attention cannot take; load the model with attn_implementation='sdpa' or 'eager'")
        self.quirks = bool(getattr(method, "reference_quirks", False))
        self.own_scores = method.scores_own_layer
        self.recurrent = recurrent
        self.gated_queries = gated_queries
        self.score_layer = {k: self._score_layer(k) for k in self.prune_at}
        self.renumber = method.renumbers_positions
        self.rotary = getattr(decoder, "rotary_emb", None)
        if self.renumber and self.rotary is None:
            raise ValueError(f"{method.describe()} renumbers positions with the text model's rotary module, which "
                             f"{type(decoder).__name__} lacks; pass renumber=False")
        self.run: LayerRun | None = None
        self._rotary_busy = False  # our own rotary calls are not the model's positions
        self._handles = []
        for i in range(self.prune_at[0], self.num_layers):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        if self.renumber:
            self._handles.append(self.rotary.register_forward_pre_hook(self._rotary_hook, with_kwargs=True))
        for k in self.prune_at:
            if not self.own_scores:
                attention = self.layers[self.score_layer[k]].self_attn
                self._handles.append(attention.register_forward_pre_hook(self._capture_hook(k), with_kwargs=True))
            if self.quirks:
                self._handles.append(self.layers[k - 1].register_forward_pre_hook(self._quirk_hook(k - 1),
                                                                                  with_kwargs=True))

    def _score_layer(self, k: int) -> int:
        """The full-attention layer whose attention scores the candidates at pruning layer ``k``."""
        last = k if self.own_scores else k - 1
        full = [j for j in range(last + 1) if j not in self.recurrent]
        where = f"{self.method.describe()} prunes at layer {k}"
        if not full:
            raise ValueError(f"{where}, but layers 0..{last} are all recurrent (linear attention) and have no "
                             f"attention to score tokens with; prune after the first full-attention layer (layers "
                             f"{sorted(set(range(self.num_layers)) - self.recurrent)})")
        j = full[-1]
        if self.quirks and k - 1 in self.recurrent:
            raise ValueError(f"{where}: reference_quirks change layer {k - 1}'s attention mask, which a recurrent "
                             f"layer has not; pass reference_quirks=False or prune after a full-attention layer")
        earlier = [s for s in self.prune_at if j < s < k]
        if earlier and not self.own_scores:
            raise ValueError(f"{where} with scores from layer {j} (the last full-attention layer before it), but "
                             f"layer {earlier[-1]} prunes in between; put a full-attention layer between the stages")
        return j

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ hooks
    def _full_pass(self, kwargs: dict[str, Any], layer: int) -> bool:
        run = self.run
        if run is None or not run.accepts_full_passes:
            return False
        return self.full_passes(kwargs, layer)

    def _capture_hook(self, k: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self.run is not None and self._full_pass(kwargs, self.score_layer[k]):
                states = args[0] if args else kwargs["hidden_states"]
                self.run.captured[k] = (states, kwargs["position_embeddings"])
            return None

        return hook

    def _rotary_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if self.run is not None and not self._rotary_busy:
            self.run.rope_positions = args[1] if len(args) > 1 else kwargs["position_ids"]
            self.run.renumbered = {}
        return None

    def _quirk_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if not self._full_pass(kwargs, layer):
                return None
            states = args[0] if args else kwargs["hidden_states"]  # layer K-1 < K: still full length
            valid = _prompt_map(self.run.roles.attended, states.shape[0], states.shape[1], True)
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
                states = self._prune(layer, states, kwargs)
            kept = run.kept_at(layer)
            if states.shape[1] < kept.index.shape[1]:  # the model cut the prompt to its last tokens (Gemma 4)
                kwargs = {**kwargs, "attention_mask": decode_mask(kwargs.get("attention_mask"), kept.index,
                                                                  kept.valid, kept.full, states.shape[1], self.flash)}
            else:
                kwargs = self._full_pass_kwargs(layer, kwargs)
        elif cache is not None and run.cache is not None and run.cache() is cache and run.kept \
                and layer not in self.recurrent:  # a recurrent layer's cached step holds no per-token keys
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
        run.full_len, run.kept, run.counts = length, {}, run.roles.entry_counts
        run.cache = None if cache is None else weakref.ref(cache)  # never keep a finished KV cache alive
        run.gathered.clear()

    def _current(self, values: Tensor, appended, pad_slot, layer: int, batch: int) -> Tensor:
        """A prompt map in the columns layer ``layer`` sees during this full pass."""
        full = _prompt_map(values, batch, self.run.full_len, appended)
        kept = self.run.kept_at(layer)
        if kept is None:
            return full
        gathered = full.gather(1, kept.index.to(full.device))
        return gathered if kept.full else gathered.masked_fill(~kept.valid.to(full.device), pad_slot)

    def _prune(self, layer: int, states: Tensor, kwargs: dict[str, Any]) -> Tensor:
        run, roles = self.run, self.run.roles
        batch, length = states.shape[:2]
        prompt_cols = length - (run.full_len - roles.group.shape[1])  # appended columns stay at the end
        # decided where the hidden states are (a model split over devices moves them from layer to layer)
        device = states.device
        group = self._current(roles.group, -1, -1, layer - 1, batch).to(device)
        previous = run.kept_at(layer - 1)
        every_key = not roles.padded and (previous is None or previous.full)  # no padding, no pad slots
        attended = None if every_key else self._current(roles.attended, True, False, layer - 1, batch).to(device)
        scores = self._scores(layer, states, kwargs, group, attended, prompt_cols)
        stage = self.prune_at.index(layer)
        step = LayerInput(hidden=states, scores=scores, group=group, stage=stage, entry_counts=roles.entry_counts,
                          counts=run.counts, num_layers=self.num_layers)
        decision = self.method.select(step)
        keep = decision.keep if decision.others_kept else (group < 0) | decision.keep
        if previous is not None and not previous.full:
            keep = keep & previous.valid.to(device)
        packed = left_packed(keep)
        if stage + 1 < len(self.prune_at):  # the next stage's candidates
            run.counts = decision.counts if decision.counts is not None else _group_sizes(group, keep,
                                                                                          len(run.counts))
        source = packed.index if packed.full else packed.index.clamp_min(0)
        hidden = decision.hidden if decision.hidden is not None else states
        gathered = hidden.gather(1, source.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        index = source if previous is None else previous.index.to(device).gather(1, source)
        kept = _Kept(index, packed.valid, packed.full)
        run.kept[layer] = self._renumbered(kept) if self.renumber else kept
        return gathered

    def _renumbered(self, kept: _Kept) -> _Kept:
        """The kept columns with how far each one's position moves: the real tokens (not padding, not pad
        slots) of its row that no longer appear before it, i.e. its row's real columns up to it in the full
        pass minus its row's kept real columns up to it. Counted over the full pass, so stages add up."""
        index, valid = kept.index, kept.valid
        if kept.full and not self.run.roles.padded:  # every column real, none a pad slot: j-th kept moves index - j
            columns = torch.arange(index.shape[1], device=index.device)
            return dataclasses.replace(kept, shift=index - columns, dropped=self.run.full_len - index.shape[1])
        real = _prompt_map(self.run.roles.attended, index.shape[0], self.run.full_len, True).to(index.device)
        real_up_to = real.cumsum(1)
        kept_up_to = (real.gather(1, index) & valid).cumsum(1)
        # every stage recomputes the rotary: a row that dropped nothing gets its own positions back, the same
        # values (cheaper than a host read of whether any row moved)
        return dataclasses.replace(kept, shift=(real_up_to.gather(1, index) - kept_up_to) * valid,
                                   dropped=real_up_to[:, -1] - kept_up_to[:, -1])

    def _scores(self, layer: int, states: Tensor, kwargs: dict[str, Any], group: Tensor, attended: Tensor | None,
                prompt_cols: int) -> Tensor:
        """``attended``: the columns' attention mask and pad slots (False), ``None`` where every column is real."""
        if self.own_scores:  # layer K's own norm and projections of what enters it, at layer K-1's positions
            scorer = self.layers[self.score_layer[layer]]
            attention = scorer.self_attn
            position_embeddings = self._position_embeddings(layer - 1, kwargs, states)
            with torch.no_grad():
                states = scorer.input_layernorm(states)
        else:
            captured = self.run.captured.pop(layer, None)
            if captured is None:
                raise ReductionError(f"no layer {self.score_layer[layer]} attention input was captured for "
                                     f"{self.method.describe()}")
            attention = self.layers[self.score_layer[layer]].self_attn
            states, position_embeddings = captured
        batch = states.shape[0]
        if self.method.query == "last":
            queries, weight = prompt_cols - 1, None
        else:  # every attended text token of the prompt
            visual = self._current(self.run.roles.visual, False, False, layer - 1, batch).to(states.device)
            text = ~visual if attended is None else attended & ~visual
            text[:, prompt_cols:] = False
            packed = left_packed(text)
            queries, weight = packed.index.clamp_min(0), packed.valid.float()
            weight = weight / weight.sum(1, keepdim=True).clamp_min(1)
        with torch.no_grad():
            return attention_to_keys(attention, states, position_embeddings, queries, weight, attended,
                                     self.gated_queries)

    def _position_embeddings(self, layer: int, kwargs: dict[str, Any], like: Tensor) -> tuple[Tensor, Tensor]:
        """The rotary cos/sin of the columns layer ``layer`` sees in this full pass (``kwargs``: any layer's)."""
        kept = self.run.kept_at(layer)
        cos, sin = kwargs["position_embeddings"]
        if kept is None:
            return cos, sin
        if not self.renumber:
            return _gather_tokens(cos, kept.index), _gather_tokens(sin, kept.index)
        start = self.run.range_start(layer)
        kind = self.rotary_kinds[layer]
        if (start, kind) not in self.run.renumbered:
            positions = self.run.rope_positions
            if positions is None or positions.shape[-1] != self.run.full_len:
                raise ReductionError(f"{self.method.describe()} renumbers positions, but the text model's rotary "
                                     f"module did not see this pass's {self.run.full_len} positions")
            self.run.renumbered[start, kind] = self._rotary(like, self._moved(positions, kept), kind)
        return self.run.renumbered[start, kind]

    def _moved(self, positions: Tensor, kept: _Kept) -> Tensor:
        """Full-pass ``positions`` at the kept columns, renumbered; made once per pass for the rotary module and
        the layers where they are the same tensor."""
        return self.run.gathered.get("full", ("moved", kept, positions),
                                     lambda: _gather_last(positions, kept.index) - kept.shift)

    def _rotary(self, like: Tensor, positions: Tensor, kind: str | None) -> tuple[Tensor, Tensor]:
        """The model's rotary module on ``positions`` (not recorded as the model's own positions)."""
        self._rotary_busy = True
        try:
            with torch.no_grad():
                return self.rotary(like, positions) if kind is None else self.rotary(like, positions, kind)
        finally:
            self._rotary_busy = False

    def _full_pass_kwargs(self, layer: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        run = self.run
        kept = run.kept_at(layer)
        embeddings, position_ids, mask = kwargs["position_embeddings"], kwargs.get("position_ids"), \
            kwargs.get("attention_mask")

        def gather() -> dict[str, Any]:
            inputs = {"position_embeddings": self._position_embeddings(layer, kwargs, embeddings[0]),
                      "attention_mask": full_pass_mask(mask, kept.index, kept.valid, kept.full, self.flash)}
            if isinstance(position_ids, Tensor) and position_ids.shape[-1] == run.full_len:
                inputs["position_ids"] = self._moved(position_ids, kept) if self.renumber else \
                    _gather_last(position_ids, kept.index)
            return inputs

        if layer in self.recurrent:  # only the padding mask: the state must not see padding or pad slots
            return {**kwargs, "attention_mask": run.gathered.get("full", ("recurrent", kept, mask),
                                                                 lambda: _recurrent_mask(mask, kept))}
        return {**kwargs, **run.gathered.get("full", (kept, embeddings, position_ids, mask), gather)}

    def injection_rows(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Translate a full-length injection mask for the sequence leaving the current layer.

        Some families add per-token embeddings between decoder layers at the masked positions
        (Qwen3-VL's deepstack features, given in row-major order of the mask). Returns the mask over the
        current columns and, for each of its True entries, the row of the original embeddings.
        """
        kept = self.run.kept_at(self.run.current_layer)
        flat_rank = (positions.flatten().long().cumsum(0) - 1).view_as(positions)
        positions = positions.expand(kept.index.shape[0], -1) if positions.shape[0] == 1 else positions
        index, valid = kept.index.to(positions.device), kept.valid.to(positions.device)
        current = positions.gather(1, index) & valid
        return current, flat_rank.gather(1, index)[current]

    def kept_columns(self, values: Tensor) -> Tensor:
        """Per-token values of the full pass, (B, L, ...), at the columns the current layer runs (Gemma 4's
        per-layer input embeddings); pad slots read column 0 (their rows are masked)."""
        kept = self.run.kept_at(self.run.current_layer)
        index = kept.index if kept.full else kept.index.clamp_min(0)
        index = index.to(values.device).view(*index.shape, *(1,) * (values.dim() - 2))
        return values.gather(1, index.expand(*index.shape[:2], *values.shape[2:]))

    # ------------------------------------------------------------------ cached steps
    def _decode_kwargs(self, layer: int, kwargs: dict[str, Any], cache: Any, queries: int) -> dict[str, Any]:
        run = self.run
        kept = run.kept_at(layer)
        keys = cache.get_seq_length(0)  # layer 0 already holds this step's tokens: the mask's key count
        mask = kwargs.get("attention_mask")

        window = self.windows[layer]

        def gather() -> Tensor:
            new = torch.arange(run.full_len, keys, device=kept.index.device).expand(kept.index.shape[0], -1)
            key_index = torch.cat([kept.index, new], dim=1)
            key_valid = torch.cat([kept.valid, torch.ones_like(new, dtype=torch.bool)], dim=1)
            if window is None and not (isinstance(mask, Tensor) and mask.dim() == 4 and mask.shape[-1] != keys):
                return decode_mask(mask, key_index, key_valid, kept.full, queries, self.flash)
            # built from columns: a sliding cache holds only its last columns (then this step's tokens), and a
            # model that sizes its global mask for its first global layer's cache (Gemma 3) sized it for a
            # shorter layer when that layer was pruned
            held_by = cache.layers[self.full_passes.source[layer]]
            held = held_by.keys.shape[-2] if held_by.is_initialized else 0
            attended = _prompt_map(run.roles.attended, kept.index.shape[0], run.full_len, True)
            key_valid[:, :kept.index.shape[1]] &= attended.to(kept.index.device).gather(1, kept.index)
            key_index, key_valid = key_index[:, key_index.shape[1] - queries - held:], \
                key_valid[:, key_valid.shape[1] - queries - held:]
            return window_decode_mask(key_index, key_valid, new[0, new.shape[1] - queries:], window, mask)

        kwargs = {**kwargs, "attention_mask": run.gathered.get(keys, (kept, mask, queries, window), gather)}
        return self._renumbered_step(layer, kwargs, kept) if self.renumber else kwargs

    def _renumbered_step(self, layer: int, kwargs: dict[str, Any], kept: _Kept) -> dict[str, Any]:
        """A cached step's new tokens moved down by everything their row dropped up to this layer."""
        run = self.run
        start = run.range_start(layer)
        kind = self.rotary_kinds[layer]
        if (start, kind) not in run.renumbered:
            if run.rope_positions is None:
                raise ReductionError(f"{self.method.describe()} renumbers positions, but the text model's rotary "
                                     f"module saw no positions for this step")
            shift = kept.drops_per_row()
            run.renumbered[start, kind] = self._rotary(kwargs["position_embeddings"][0], run.rope_positions - shift,
                                                       kind)
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, Tensor):
            kwargs["position_ids"] = position_ids - kept.drops_per_row()
        return {**kwargs, "position_embeddings": run.renumbered[start, kind]}


def _recurrent_mask(mask: Tensor | None, kept: _Kept) -> Tensor:
    """A recurrent layer's (B, N) padding mask at the kept columns: the model's 2-D mask (``None`` when it has
    no padding) gathered, pad slots 0."""
    valid = kept.valid
    if mask is None:
        return valid.long()
    return mask.expand(valid.shape[0], -1).gather(1, kept.index.to(mask.device)) * valid.to(mask.device)


def _gather_tokens(values: Tensor, index: Tensor) -> Tensor:
    """Gather the token axis (dim 1) of (B|1, L, ...) at ``index`` (B, N)."""
    index = index.to(values.device)
    values = _rows(values, 0, index.shape[0])
    shape = (*index.shape, *values.shape[2:])
    return values.gather(1, index.view(*index.shape, *([1] * (values.dim() - 2))).expand(shape))


def _gather_last(values: Tensor, index: Tensor) -> Tensor:
    """Gather the last axis of position ids shaped (B|1, L) or (R, B|1, L) at ``index`` (B, N)."""
    index = index.to(values.device)
    if values.dim() == 2:
        return _rows(values, 0, index.shape[0]).gather(1, index)
    return _rows(values, 1, index.shape[0]).gather(2, index.expand(values.shape[0], -1, -1))


def _rows(values: Tensor, dim: int, batch: int) -> Tensor:
    """``values`` with its batch axis ``dim`` broadcast to ``batch`` rows (a no-op, and no op, when it has them)."""
    if values.shape[dim] == batch:
        return values
    return values.expand(*values.shape[:dim], batch, *values.shape[dim + 1:])


def _prompt_map(values: Tensor, batch: int, length: int, appended) -> Tensor:
    """A prompt-shaped (B0, L0) map for a pass of ``length``: rows repeated for beams, appended columns
    (tokens an uncached generate added after the prompt) set to ``appended``."""
    if batch != values.shape[0]:  # repeat_interleave dispatches ~5 ops even for one repeat
        values = values.repeat_interleave(batch // values.shape[0], dim=0)
    extra = length - values.shape[1]
    if extra:
        values = torch.cat([values, values.new_full((batch, extra), appended)], dim=1)
    return values


def _group_sizes(group: Tensor, keep: Tensor, groups: int) -> tuple[int, ...]:
    """Candidates each visual input kept, read back from the device: for a method whose decision does not
    say (``LayerOutput.counts``), before a later stage needs them."""
    members = group[keep & (group >= 0)]
    return tuple(torch.bincount(members, minlength=groups).tolist())
