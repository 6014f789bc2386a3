"""Attention that chosen query tokens pay to every key at one decoder layer, without eager attention.

SDPA and flash attention return no weights. The rows a method needs (the last prompt token, or the text
tokens) are recomputed from the attention module's own projections of the layer input: q/k projection,
the per-head q/k norms where the family has them (Qwen3), rotary embedding, GQA head sharing, the
module's scaling, and the causal + padding mask. Softmax runs in float32 like transformers' eager path,
so the result equals the eager attention weights of those rows averaged over heads.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


def _heads(attention: nn.Module, projection: str, norm: str, x: Tensor, gated: bool = False) -> Tensor:
    """(..., heads, head_dim) from one projection of ``x`` (..., D), with the family's per-head norm.

    ``gated``: each head's projection is followed by as many output-gate channels (Qwen3.5's q_proj), dropped."""
    states = getattr(attention, projection)(x)
    if gated:
        states = states.view(*x.shape[:-1], -1, 2 * attention.head_dim)[..., :attention.head_dim]
    states = states.reshape(*x.shape[:-1], -1, attention.head_dim)
    head_norm = getattr(attention, norm, None)
    return states if head_norm is None else head_norm(states)


@functools.lru_cache(maxsize=32)
def _half_signs(width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[-1] * (width / 2) + [1] * (width / 2)``: rotate-half is this sign times the half-rolled input."""
    return torch.ones(width, dtype=dtype, device=device).index_fill_(0, torch.arange(width // 2, device=device), -1)


def _signed(sin: Tensor) -> Tensor:
    """``sin`` with rotate-half's signs folded in, shared by the query and the key rotation.

    ``rotate_half(x) * sin == x.roll(half) * (signs * sin)`` exactly (a sign flip rounds nothing), so a
    rotation is one roll and three elementwise ops instead of two slices, a negation and a concatenation."""
    return sin * _half_signs(sin.shape[-1], sin.dtype, sin.device)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotary embedding as every supported family applies it (rotate-half; M-RoPE is folded into cos/sin), on
    the first ``cos.shape[-1]`` channels of each head (partial rotary, as Qwen3.5: the rest pass unrotated);
    ``signed_sin`` from ``_signed``."""
    if cos.shape[-1] < x.shape[-1]:
        rotary = cos.shape[-1]
        return torch.cat((_rotate(x[..., :rotary], cos, signed_sin), x[..., rotary:]), dim=-1)
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def attention_to_keys(
    attention: nn.Module,
    layer_input: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    queries: Tensor | int,
    query_weight: Tensor | None,
    key_valid: Tensor | None,
    gated_queries: bool = False,
) -> Tensor:
    """Head-averaged attention of the ``queries`` rows, averaged with ``query_weight``: (B, L) float32.

    ``layer_input``: (B, L, D) the normalised hidden states the attention module receives.
    ``queries``: (B, Q) column of each query row, with ``query_weight`` (B, Q) weights summing to 1 per row
    (0 for padding entries); or one column (an int) every row queries from, weight ``None`` (the last prompt
    token: its row is selected, and the keys after it, which causality masks, are never projected).
    ``key_valid``: (B, L) False on padding keys, ``None`` when there are none. Keys after a query are masked
    (causal), as the model's own attention does. ``gated_queries``: the q projection carries an output gate
    per head (Qwen3.5), which weights the attention output, not the attention itself. Grouped-query heads
    share their key head without repeating it: the query heads of one key head form one matrix product.
    """
    if isinstance(queries, int):
        return _one_query(attention, layer_input, position_embeddings, queries, key_valid, gated_queries)
    cos, sin = position_embeddings
    cos, signed_sin = cos.unsqueeze(1), _signed(sin).unsqueeze(1)  # (B|1, 1, L, r)
    gather_rows = queries.unsqueeze(-1)
    rows = layer_input.gather(1, gather_rows.expand(-1, -1, layer_input.shape[-1]))
    rotary_rows = gather_rows.unsqueeze(1).expand(-1, 1, -1, cos.shape[-1])
    q_cos = cos.expand(rows.shape[0], -1, -1, -1).gather(2, rotary_rows)
    q_sin = signed_sin.expand(rows.shape[0], -1, -1, -1).gather(2, rotary_rows)
    q = _rotate(_heads(attention, "q_proj", "q_norm", rows, gated_queries).transpose(1, 2), q_cos, q_sin)
    k = _rotate(_heads(attention, "k_proj", "k_norm", layer_input).transpose(1, 2), cos, signed_sin)
    batch, heads, num_queries, head_dim = q.shape  # q (B, H, Q, hd), k (B, Hk, L, hd)
    grouped = q.reshape(batch, k.shape[1], heads // k.shape[1] * num_queries, head_dim)
    logits = (grouped @ k.transpose(-1, -2)).float() * attention.scaling  # (B, Hk, G * Q, L)
    logits = logits.view(batch, k.shape[1], -1, num_queries, layer_input.shape[1])
    blocked = torch.arange(layer_input.shape[1], device=layer_input.device) > gather_rows  # (B, Q, L)
    if key_valid is not None:
        blocked = blocked | ~key_valid.unsqueeze(1)
    logits = logits.masked_fill(blocked[:, None, None], float("-inf"))
    probabilities = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean((1, 2))  # (B, Q, L)
    return (probabilities * query_weight.unsqueeze(-1).float()).sum(1)


def _one_query(attention: nn.Module, layer_input: Tensor, position_embeddings: tuple[Tensor, Tensor], column: int,
               key_valid: Tensor | None, gated_queries: bool) -> Tensor:
    """``attention_to_keys`` of one query column shared by every row: the keys after it are left out; the
    query row's projection comes out as (B, H, hd) and the keys stay (B, keys, Hk, hd), so one batched
    product per (row, key head) scores them with no transposes of the query."""
    batch, length = layer_input.shape[:2]
    keys = column + 1
    cos, sin = position_embeddings  # (B|1, L, r)
    signed_sin = _signed(sin)
    if keys < length:
        layer_input, cos, signed_sin = layer_input[:, :keys], cos[:, :keys], signed_sin[:, :keys]
    q = _rotate(_heads(attention, "q_proj", "q_norm", layer_input[:, column], gated_queries),
                cos[:, column:keys], signed_sin[:, column:keys])  # (B, H, hd)
    k = _rotate(_heads(attention, "k_proj", "k_norm", layer_input), cos.unsqueeze(2), signed_sin.unsqueeze(2))
    kv_heads, head_dim = k.shape[2], k.shape[3]  # k: (B, keys, Hk, hd)
    logits = torch.bmm(q.view(batch * kv_heads, -1, head_dim),  # query heads of one key head share its keys
                       k.permute(0, 2, 3, 1).reshape(batch * kv_heads, head_dim, keys))
    logits = logits.float().view(batch, -1, keys) * attention.scaling  # (B, H, keys)
    if key_valid is not None:  # the query attends itself: no row is fully masked
        logits = logits.masked_fill(~key_valid[:, :keys].view(batch, 1, keys), float("-inf"))
    probabilities = torch.softmax(logits, dim=-1).mean(1)  # (B, keys)
    return probabilities if keys == length else torch.nn.functional.pad(probabilities, (0, length - keys))
