"""wrap / unwrap / reduced / stats: install a reduction on one model instance, reversibly.

Wrapping sets instance attributes ``forward`` and ``generate`` (never touching the class, so other
instances are unaffected) and keeps what was there before, so ``unwrap`` restores the model exactly.
Wrapping an already wrapped model replaces its method and options; the saved originals are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from vtr.adapters import Adapter, adapter_for
from vtr.engine import ReducedCall, reduce_inputs
from vtr.errors import ReductionError
from vtr.llm.cache import check_shrinkable_cache, passed_cache
from vtr.llm.ppe import PositionPreservation
from vtr.llm.pruner import LayerPruner, LayerRun, PromptRoles
from vtr.llm.reached import reached_last_layer
from vtr.llm.unmerge import UnmergeRun, VirtualUnmerging
from vtr.methods import KeepAll, LayerMethod, Method, Stage, VisionMethod, make_methods
from vtr.positions import PositionScheme
from vtr.stats import CallStats, SampleStats
from vtr.turns import CachedTurn, continue_inputs

_STATE_ATTR = "_vtr_state"
_PATCHED = ("forward", "generate")
_MISSING = object()


@dataclass
class Pipeline:
    """The configured stages of one wrap: a vision-encoder method (or none), a pre-LLM method (``KeepAll``
    if none), an in-LLM one, the virtual unmerging hooks of a vision method with ``vtu=True``, and the
    PPE rotary hooks of ``positions="ppe"``."""

    methods: list[Method]  # as configured by the user (to restore after a ``reduced`` block)
    pre_llm: Method
    in_llm: LayerPruner | None
    description: str
    vision: VisionMethod | None = None
    unmerging: VirtualUnmerging | None = None
    ppe: PositionPreservation | None = None

    def close(self) -> None:
        for hooks in (self.in_llm, self.unmerging, self.ppe):
            if hooks is not None:
                hooks.remove()


@dataclass
class WrapState:
    """Everything a wrapped model needs: the stages, the adapter, and what to restore on unwrap."""

    adapter: Adapter
    pipeline: Pipeline
    positions: PositionScheme
    saved: dict[str, Any]  # attribute name -> previous instance-dict entry (or _MISSING)
    # the last call's stats, or what makes them when first asked for (an in-LLM stage's per-layer counts)
    recorded: CallStats | Callable[[], CallStats] | None = None
    generating: ReducedCall | None = field(default=None, repr=False)
    # the KV caches reduced generate() calls filled -> what they hold (a later turn maps onto it)
    turns: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    @property
    def last_stats(self) -> CallStats | None:
        if callable(self.recorded):
            self.recorded = self.recorded()
        return self.recorded

    @last_stats.setter
    def last_stats(self, stats: CallStats | Callable[[], CallStats] | None) -> None:
        self.recorded = stats


def wrap(
    model: torch.nn.Module,
    method: str | Method | list[str | Method] = "divprune",
    budget: int | float | None = None,
    *,
    positions: str | PositionScheme = "original",
    ppe_chunks: int | None = None,
    ppe_members: str | None = None,
    **options: Any,
) -> torch.nn.Module:
    """Make ``model`` see fewer visual tokens in ``generate()`` and ``forward()``; returns the same object.

    ``method``: a registered name (``vtr.available_methods()``), a configured method object, or a list
    of them to compose stages (at most one before the LLM and one inside it; a vision-encoder method
    such as ``tome`` composes with an in-LLM one only), e.g. ``["divprune", "fastv"]``. ``budget``:
    int = visual tokens kept per image/video, float in (0, 1] = fraction kept. ``positions``: ``"original"`` (kept tokens keep their original 1-D or M-RoPE
    positions), ``"compact"`` (kept tokens are re-indexed consecutively) or ``"ppe"`` (merged tokens
    rotate ``ppe_chunks`` bands of their rotary frequencies with the positions of as many members,
    chosen by ``ppe_members``: ``"nearest"`` to the cluster centre or ``"highest"`` index; see
    ``vtr.positions``); in-LLM stages and virtual unmerging keep positions (except PDrop, which renumbers
    after each drop as its reference does: its option ``renumber=False`` keeps them). Extra keyword
    arguments are method options.
    """
    scheme = PositionScheme.make(positions, ppe_chunks, ppe_members)
    methods = make_methods(method, budget, **options)
    if scheme.mode != "original" and any(isinstance(m, VisionMethod) and m.vtu for m in methods):
        raise ValueError(f"virtual token unmerging (vtu=True) attends at every original position; it cannot take "
                         f"positions={scheme.mode!r} (pass vtu=False to shrink the prompt with {scheme.mode} "
                         f"positions)")
    state: WrapState | None = getattr(model, _STATE_ATTR, None)
    adapter = adapter_for(model) if state is None else state.adapter
    pipeline = _pipeline(adapter, methods, scheme)
    if state is not None:  # re-wrap: new configuration, same saved originals
        state.pipeline.close()
        state.pipeline, state.positions, state.last_stats = pipeline, scheme, None
        return model
    saved = {name: model.__dict__.get(name, _MISSING) for name in _PATCHED}
    state = WrapState(adapter=adapter, pipeline=pipeline, positions=scheme, saved=saved)
    original_forward, original_generate = model.forward, model.generate
    model.__dict__["forward"] = _reducing_forward(state, model, original_forward)
    model.__dict__["generate"] = _reducing_generate(state, model, original_generate)
    model.__dict__[_STATE_ATTR] = state
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Remove vtr from ``model`` and restore exactly what was there before ``wrap``."""
    state = _state(model)
    state.pipeline.close()
    for name, previous in state.saved.items():
        if previous is _MISSING:
            model.__dict__.pop(name, None)
        else:
            model.__dict__[name] = previous
    del model.__dict__[_STATE_ATTR]
    return model


@contextlib.contextmanager
def reduced(model: torch.nn.Module, method: str | Method = "divprune", budget: int | float | None = None,
            **kwargs: Any) -> Iterator[torch.nn.Module]:
    """``with vtr.reduced(model, ...):`` wraps for the block and restores the previous state after it.

    On an already wrapped model the block runs with the new configuration and the previous one comes
    back afterwards.
    """
    previous: WrapState | None = getattr(model, _STATE_ATTR, None)
    before = None if previous is None else (previous.pipeline.methods, previous.positions)
    wrap(model, method, budget, **kwargs)
    try:
        yield model
    finally:
        if before is None:
            unwrap(model)
        else:
            last_stats = previous.last_stats
            wrap(model, before[0], positions=before[1])
            previous.last_stats = last_stats


def stats(model: torch.nn.Module) -> CallStats | None:
    """Visual tokens before/after, per sample, of the last call (``None`` before the first).

    Recorded by every ``generate()`` (a text-only prompt records zero visual tokens) and by every
    ``forward()`` that carries pixels; a ``forward()`` without pixels (a decoding step) leaves it as is.
    """
    return _state(model).last_stats


def is_wrapped(model: torch.nn.Module) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def _state(model: torch.nn.Module) -> WrapState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"this {type(model).__name__} is not wrapped; call vtr.wrap(model, method=..., budget=...)")
    return state


def _pipeline(adapter: Adapter, methods: list[Method], scheme: PositionScheme) -> Pipeline:
    by_stage: dict[Stage, list[Method]] = {}
    for m in methods:
        by_stage.setdefault(m.stage, []).append(m)
    for stage, members in by_stage.items():
        if len(members) > 1:
            raise ValueError(
                f"{[m.name for m in members]} all run at stage {stage.value!r}; compose at most one method per "
                f"stage (one in the vision encoder, one before the LLM, one inside it)"
            )
    vision = by_stage.get(Stage.VISION, [None])[0]
    if vision is not None:
        _check_vision_composition(adapter, vision, by_stage)
    pre_llm = by_stage.get(Stage.PRE_LLM, [KeepAll()])[0]
    if any(pre_llm.wants_attention(modality) for modality in adapter.modalities()):
        pre_llm.attention_requests(adapter.vision_info())  # e.g. hiprune's object_layer vs the encoder's depth
    in_llm = by_stage.get(Stage.LLM, [None])[0]
    if in_llm is not None:
        adapter.check_in_llm(in_llm)
    if scheme.ppe and isinstance(in_llm, LayerMethod) and in_llm.renumbers_positions:
        raise ValueError(f"{in_llm.describe()} renumbers positions after each drop, which would replace the PPE "
                         f"positions of positions='ppe'; pass renumber=False to cascade it after PPE")
    pipeline = Pipeline(methods, pre_llm, None, " + ".join(m.describe() for m in methods), vision)
    try:  # a hook that fails to install takes the ones installed before it along: the model stays as it was
        if vision is not None and vision.vtu:
            pipeline.unmerging = VirtualUnmerging(adapter.decoder())
        if scheme.ppe:  # prepended to every layer's hooks: the in-LLM stage gathers the PPE cos/sin at its columns
            pipeline.ppe = PositionPreservation(adapter.decoder(), adapter.rope_rows, scheme.chunks,
                                                adapter.rotary_kinds(), adapter.cache_layers())
        if in_llm is not None:
            assert isinstance(in_llm, LayerMethod)
            pipeline.in_llm = LayerPruner(adapter.decoder(), in_llm, adapter.text_attn_implementation(),
                                          adapter.sliding_windows(), adapter.rotary_kinds(),
                                          adapter.recurrent_layers(), adapter.gated_queries(),
                                          adapter.cache_layers())
            pipeline.in_llm.remove = _chained(pipeline.in_llm.remove, adapter.patch_decoder(pipeline.in_llm))
    except BaseException:
        pipeline.close()
        raise
    return pipeline


def _check_vision_composition(adapter: Adapter, vision: VisionMethod, by_stage: dict[Stage, list[Method]]) -> None:
    """What a vision-encoder method composes with, and its plan for this encoder (checked at wrap time,
    before any hook exists): building its matcher for a full-size encoder call raises what every call would
    (dymu's threshold count against the encoder's depth, an unreachable tome budget)."""
    target = adapter.merge_target()  # families without vision-encoder merging say so here
    if Stage.PRE_LLM in by_stage:
        raise ValueError(
            f"{vision.name} merges inside the vision encoder; composing it with the pre-LLM method "
            f"{by_stage[Stage.PRE_LLM][0].name} is not supported yet: use it alone or with an in-LLM method "
            f"(e.g. ['{vision.name}', 'fastv'])"
        )
    if vision.vtu and Stage.LLM in by_stage:
        raise ValueError(
            f"{vision.name} with vtu=True runs every decoder layer's attention at the original length, which an "
            f"in-LLM method ({by_stage[Stage.LLM][0].name}) cannot shorten; pass vtu=False to compose them"
        )
    vision.matcher(target.full_size_geometry())


def _chained(*steps):
    def run() -> None:
        for step in steps:
            step()

    return run


def _needs_reduction(state: WrapState, kwargs: dict[str, Any]) -> bool:
    return kwargs.get("mm_encoder_outputs") is None and bool(state.adapter.present_modalities(kwargs))


def _reducing_forward(state: WrapState, model: torch.nn.Module, original):
    signature = inspect.signature(original)

    @functools.wraps(original)  # generate() inspects forward's signature: keep it visible
    def forward(*args: Any, **kwargs: Any):
        if args:  # generate() passes keywords; a direct call may pass input_ids positionally
            bound = dict(signature.bind_partial(*args, **kwargs).arguments)
            kwargs = {**bound.pop("kwargs", {}), **bound}
        if not _needs_reduction(state, kwargs):
            return original(**_with_explicit_mask(state.generating, kwargs))
        call, run = _start(state, kwargs, for_generate=False)
        labels = call.kwargs.pop("labels", None) if run is not None else None
        try:
            output = original(**call.kwargs)
        finally:
            _finish(state, run, call)
        kept_index = call.kept_index
        final = None if run is None else run.final_index()
        if final is not None:  # the in-LLM stage shortened the output too
            kept_index = kept_index.gather(1, final.clamp_min(0)).masked_fill(final < 0, -1)
        if labels is not None:
            if final is not None:
                labels = labels.gather(1, final.clamp_min(0)).masked_fill(final < 0, -100)
            output["loss"] = model.loss_function(
                logits=output.logits, labels=labels, vocab_size=model.config.get_text_config().vocab_size)
        if isinstance(output, dict):
            output["vtr_kept_index"] = kept_index
        return output

    return forward


def _start(state: WrapState, kwargs: dict[str, Any], for_generate: bool,
           generation_config: Any = None) -> tuple[ReducedCall, LayerRun | None]:
    """Reduce before the LLM and arm the in-LLM stage (if any) for the passes of this call."""
    pipeline = state.pipeline
    if pipeline.in_llm is not None:
        check_shrinkable_cache(kwargs, generation_config)
    call = reduce_inputs(state.adapter, pipeline.pre_llm, state.positions, kwargs, for_generate, pipeline.vision)
    state.last_stats = dataclasses.replace(call.stats, method=pipeline.description)
    if pipeline.unmerging is not None:
        pipeline.unmerging.run = UnmergeRun(call.token_representative)
    if pipeline.ppe is not None:
        pipeline.ppe.begin(call.chunk_positions)
    pruner = pipeline.in_llm
    if pruner is None:
        return call, None
    pruner.run = LayerRun(PromptRoles(call.token_item, call.token_structural, call.kwargs["attention_mask"],
                                      call.item_sizes, call.padded))
    return call, pruner.run


def _finish(state: WrapState, run: LayerRun | None, call: ReducedCall) -> None:
    """Close a call's in-LLM run (later cached steps on its cache still work) and record per-layer stats
    and the visual tokens that reached the last layer."""
    if state.pipeline.unmerging is not None:  # cached steps after the call need no unmerging: nothing to keep
        state.pipeline.unmerging.run = None
    if state.pipeline.ppe is not None:
        state.pipeline.ppe.end()
    if run is None:
        return
    run.accepts_full_passes = False
    run.captured.clear()
    if run.kept and state.last_stats is not None:  # counted when vtr.stats asks, off the hot path
        state.last_stats = functools.partial(_with_layer_stats, state.last_stats, run, call.token_item,
                                             state.pipeline.in_llm)


def _with_layer_stats(stats: CallStats, run: LayerRun, token_item: Tensor, pruner: LayerPruner) -> CallStats:
    """``stats`` with the visual tokens each decoder layer saw and those that reached the last layer."""
    per_layer = run.visual_per_layer(pruner.num_layers)  # (rows of the pass, layers from K on)
    step = per_layer.shape[0] // len(stats.samples)  # beams / num_return_sequences repeat rows
    reached = reached_last_layer(run.final_index(), token_item, step)
    samples = tuple(
        dataclasses.replace(sample, visual_per_layer=(sample.visual_after,) * pruner.prune_at[0]
                            + tuple(per_layer[i * step].tolist()),
                            items=tuple(dataclasses.replace(item, last_layer=last)
                                        for item, last in zip(sample.items, reached[i])))
        for i, sample in enumerate(stats.samples)
    )
    return dataclasses.replace(stats, samples=samples)


def _with_explicit_mask(call: ReducedCall | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Inside a reduced generate(), give uncached steps an explicit all-ones mask.

    generate() drops an all-ones mask, and without a mask and a cache transformers reads a jump in 1-D
    position ids as the start of a packed sequence. Kept tokens with original positions have such jumps.
    """
    if call is None or not call.gapped_positions or kwargs.get("attention_mask") is not None:
        return kwargs
    cache = passed_cache(kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        return kwargs
    ids = kwargs.get("input_ids")
    if ids is None:
        return kwargs
    return {**kwargs, "attention_mask": torch.ones_like(ids)}


def _reducing_generate(state: WrapState, model: torch.nn.Module, original):
    @functools.wraps(original)
    def generate(inputs: Tensor | None = None, **kwargs: Any):
        if inputs is not None:
            kwargs["input_ids"] = inputs
        cache = passed_cache(kwargs)
        held = 0 if cache is None else cache.get_seq_length()
        turn = state.turns.get(cache) if held else None
        if held and _needs_reduction(state, kwargs):
            raise ReductionError(
                f"vtr reduces the images and videos of a conversation's first turn, but pixel inputs came with a "
                f"KV cache already holding {held} tokens; on later turns pass no pixels (the cache holds them). "
                f"To add an image, start over without the cache: the whole conversation with all its images"
            )
        if turn is not None:
            return _continued_generate(state, original, turn, held, kwargs)
        if not _needs_reduction(state, kwargs):
            state.last_stats = _unreduced_stats(state, kwargs)
            return original(**kwargs)
        call, run = _start(state, kwargs, for_generate=True, generation_config=model.generation_config)
        state.generating = call
        try:
            output = original(**call.kwargs)
        finally:
            state.generating = None
            _finish(state, run, call)
        output = _with_original_prompt(output, kwargs["input_ids"], call.kept_index.shape[1])
        _remember_turn(state, cache, output, lambda: CachedTurn.after(
            output, kwargs["input_ids"], kwargs.get("attention_mask"), call.kwargs, call.kept_index,
            state.last_stats, run, state.pipeline.in_llm))
        return output

    return generate


def _continued_generate(state: WrapState, original, turn: CachedTurn, held: int, kwargs: dict[str, Any]):
    """A later turn of a conversation whose cache a reduced call filled (``vtr.turns``): the first turn's
    reduction stays, including the in-LLM stage's choice in the cache's shorter layers."""
    pruner = state.pipeline.in_llm
    if turn.pruner is not None and turn.pruner is not pruner:
        raise ReductionError(
            f"this KV cache was filled under an earlier vtr configuration whose in-LLM stage "
            f"({turn.stats.method}) left shorter layers in it; the model is now wrapped with "
            f"{state.pipeline.description}. Finish the conversation before re-wrapping, or start over without "
            f"the cache"
        )
    call = continue_inputs(state.adapter, turn, held, kwargs)
    previous = None if pruner is None else pruner.run
    if pruner is not None:  # the cache's own record of its shorter layers (or none: full-length layers)
        pruner.run = turn.layer_run
    try:
        output = original(**call.kwargs)
    finally:
        if pruner is not None:
            pruner.run = previous
    state.last_stats = turn.stats
    output = _with_original_prompt(output, call.caller_ids, call.kwargs["input_ids"].shape[1])
    _remember_turn(state, passed_cache(kwargs), output, lambda: CachedTurn.after(
        output, call.caller_ids, call.caller_mask, call.kwargs, call.kept_index, turn.stats, turn.layer_run,
        turn.pruner))
    return output


def _remember_turn(state: WrapState, passed: Any, output: Any, turn: Callable[[], CachedTurn]) -> None:
    """Record what the cache of a finished reduced generate() holds: the one passed in, or the one returned
    (``turn`` is built only then: a call that leaves no cache behind has no later turn)."""
    cache = passed if passed is not None else (None if isinstance(output, Tensor) else passed_cache(output))
    if cache is not None:
        state.turns[cache] = turn()


def _unreduced_stats(state: WrapState, kwargs: dict[str, Any]) -> CallStats:
    """Stats of a generate() call that had nothing to reduce (a text-only prompt)."""
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    lengths = [] if ids is None else (mask.sum(1) if mask is not None else [ids.shape[1]] * ids.shape[0])
    samples = tuple(SampleStats((), int(n), int(n)) for n in lengths)
    return CallStats(method=state.pipeline.description, positions=state.positions.mode, samples=samples)


def _with_original_prompt(output: Any, prompt: Tensor, reduced_len: int) -> Any:
    """Callers trim generate()'s output by the prompt they passed: give back that prompt + new tokens."""
    sequences = output if isinstance(output, Tensor) else output.sequences
    repeat = sequences.shape[0] // prompt.shape[0]  # beams / num_return_sequences repeat rows
    prefix = (prompt if repeat == 1 else prompt.repeat_interleave(repeat, dim=0)).to(sequences.device)
    restored = torch.cat([prefix, sequences[:, reduced_len:]], dim=1)
    if isinstance(output, Tensor):
        return restored
    output.sequences = restored
    return output
