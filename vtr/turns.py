"""Later turns of a conversation on a KV cache that a reduced ``generate()`` filled.

A chat loop passes the previous turn's cache back with the whole conversation as ``input_ids``
(``cat(out.sequences, follow_up)``) and no pixels: they are in the cache. generate() feeds only the
columns after the cache's length. A cache vtr filled holds the *reduced* prompt, shorter than the
caller's one, so the caller's columns must be mapped to the cache's before generate() slices them.

vtr knows which of the caller's columns the cache holds (``CachedTurn``): the kept prompt columns,
then every generated token. A later turn drops the pruned columns from the new ``input_ids``, keeps
the positions the cache was filled with (original ones, gaps included; M-RoPE rows as computed for
the first turn, so Qwen's ``rope_deltas`` play no part) and numbers the new tokens on from the last
one, as generate() numbers decoding steps. In-LLM stages keep the first turn's choice, as their
shorter layers of the cache do: the new tokens attend to the kept columns only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtr.adapters.base import Adapter
from vtr.engine import gather_columns, pad_value
from vtr.errors import ReductionError
from vtr.llm.pruner import LayerPruner, LayerRun
from vtr.stats import CallStats

# (B, L) inputs with their own rule; every other one (input_ids, token types) is per token
_OWN_RULE = ("attention_mask", "position_ids")


@dataclass
class CachedTurn:
    """What a cache filled by a reduced call holds, in the caller's columns.

    ``sequences`` (B, S) is the conversation as the caller sees it after the call (its ``input_ids``
    plus the generated tokens) and ``caller_mask`` its attention mask; the first ``prompt_len`` columns
    were the call's input. ``kept_index`` (B, L') is the caller's column of every column the model
    received (-1 on padding), with that input's ``attention_mask`` and ``position_ids``; generated
    tokens follow it in the cache. ``layer_run`` is the in-LLM stage's record of the columns its
    shorter layers hold (``pruner`` its hooks).
    """

    sequences: Tensor
    caller_mask: Tensor
    prompt_len: int
    kept_index: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    stats: CallStats
    layer_run: LayerRun | None
    pruner: LayerPruner | None

    @classmethod
    def after(cls, output: Any, caller_ids: Tensor, caller_mask: Tensor | None, model_kwargs: dict[str, Any],
              kept_index: Tensor, stats: CallStats, layer_run: LayerRun | None,
              pruner: LayerPruner | None) -> "CachedTurn":
        """The turn a finished generate() left: ``output`` (its restored sequences), what the caller passed
        and what the model received (``model_kwargs``, ``kept_index`` into the caller's columns)."""
        sequences = output if isinstance(output, Tensor) else output.sequences
        repeat = sequences.shape[0] // caller_ids.shape[0]  # beams / num_return_sequences repeat rows
        mask = torch.ones_like(caller_ids) if caller_mask is None else caller_mask
        mask = mask.repeat_interleave(repeat, dim=0).to(sequences.device)
        generated = sequences.shape[1] - caller_ids.shape[1]
        positions = model_kwargs["position_ids"]
        return cls(
            sequences=sequences,
            caller_mask=torch.cat([mask, mask.new_ones(mask.shape[0], generated)], dim=1),
            prompt_len=caller_ids.shape[1],
            kept_index=kept_index.repeat_interleave(repeat, dim=0),
            attention_mask=model_kwargs["attention_mask"].repeat_interleave(repeat, dim=0),
            position_ids=positions.repeat_interleave(repeat, dim=positions.dim() - 2),
            stats=stats,
            layer_run=layer_run,
            pruner=pruner,
        )


@dataclass
class ContinuedCall:
    """The inputs of a later turn for the model's own generate(), and how they map to the caller's."""

    kwargs: dict[str, Any]
    caller_ids: Tensor  # the whole conversation the caller passed: generate() returns it + the new tokens
    caller_mask: Tensor
    kept_index: Tensor  # (B, L'') the caller's column of every column the model receives


def continue_inputs(adapter: Adapter, turn: CachedTurn, held: int, kwargs: dict[str, Any]) -> ContinuedCall:
    """Map a later turn's ``input_ids`` (the whole conversation) onto a cache holding ``held`` columns.

    Raises ``ReductionError`` (naming the fix) for what a cache of reduced columns cannot continue.
    """
    ids, mask = _caller_inputs(kwargs)
    reduced_prompt = turn.kept_index.shape[1]
    covered = turn.prompt_len + held - reduced_prompt  # caller columns whose keys the cache holds
    if not reduced_prompt <= held <= reduced_prompt + turn.sequences.shape[1] - turn.prompt_len:
        raise ReductionError(
            f"this KV cache holds {held} tokens, but the reduced conversation vtr filled it with has "
            f"{reduced_prompt} prompt tokens and {turn.sequences.shape[1] - turn.prompt_len} generated ones; a cache "
            f"vtr filled cannot be cropped into its prompt: continue with the whole cache or start over without it"
        )
    if ids.shape[1] <= covered:
        raise ReductionError(
            f"this KV cache already holds the first {covered} tokens of the conversation and input_ids has "
            f"{ids.shape[1]}: pass input_ids=cat(previous_output.sequences, new_tokens) with at least one new token"
        )
    same_rows = ids.shape[0] == turn.sequences.shape[0]
    if not same_rows or not torch.equal(ids[:, :covered], turn.sequences[:, :covered].to(
            ids.device)) or not torch.equal(mask[:, :covered], turn.caller_mask[:, :covered].to(mask.device)):
        raise ReductionError(
            f"this KV cache was filled by vtr for a conversation of {turn.sequences.shape[0]} row(s) whose first "
            f"{covered} tokens (and their attention mask) differ from the input_ids passed with it; pass "
            f"input_ids=cat(previous_output.sequences, new_tokens) with attention_mask=cat(previous_mask, ones) "
            f"(the whole conversation, {turn.sequences.shape[0]} row(s)), or drop the cache to start over"
        )
    kept = turn.kept_index.to(ids.device)
    tail_mask = mask[:, turn.prompt_len:]
    model_kwargs = dict(kwargs)
    for key, value in kwargs.items():  # input_ids, token types, ...: the cache's columns, then the rest
        if key not in _OWN_RULE and isinstance(value, Tensor) and value.shape[:2] == ids.shape:
            head = gather_columns(value[:, :turn.prompt_len], kept, pad=pad_value(adapter, key))
            model_kwargs[key] = torch.cat([head, value[:, turn.prompt_len:]], dim=1)
    model_kwargs["attention_mask"] = torch.cat([turn.attention_mask.to(mask), tail_mask], dim=1)
    model_kwargs["position_ids"] = _continued_positions(turn.position_ids.to(ids.device), tail_mask)
    tail = torch.arange(turn.prompt_len, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return ContinuedCall(model_kwargs, ids, mask, torch.cat([kept, tail], dim=1))


def _caller_inputs(kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The later turn's ``input_ids`` and attention mask, or the error a caller can act on."""
    ids = kwargs.get("input_ids")
    if ids is None:
        raise ReductionError(
            "a later turn on a KV cache vtr filled needs input_ids (the whole conversation: "
            "cat(previous_output.sequences, new_tokens)); inputs_embeds cannot be mapped onto the reduced cache"
        )
    if kwargs.get("position_ids") is not None:
        raise ReductionError(
            "do not pass position_ids on a later turn on a KV cache vtr filled: the cache holds the reduced "
            "prompt at its own positions, and vtr numbers the new tokens on from them"
        )
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    if mask.shape != ids.shape:
        raise ReductionError(
            f"a later turn on a KV cache vtr filled needs input_ids covering the whole conversation, as long as "
            f"attention_mask ({tuple(mask.shape)}), got input_ids {tuple(ids.shape)}; pass "
            f"input_ids=cat(previous_output.sequences, new_tokens)"
        )
    return ids, mask


def _continued_positions(positions: Tensor, tail_mask: Tensor) -> Tensor:
    """The cache's positions (``(B, L')`` or ``(rows, B, L')``), then the tail's: each attended tail token
    one past the previous one, counting from the last cached prompt column, as generate() numbers
    decoding steps (every generated token of the earlier turn is such a step)."""
    steps = tail_mask.long().cumsum(-1)
    return torch.cat([positions, positions[..., -1:] + steps.expand(*positions.shape[:-1], -1)], dim=-1)
