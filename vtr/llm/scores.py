"""Attention that chosen query tokens pay to every key at one decoder layer, without eager attention.

SDPA and flash attention return no weights. The rows a method needs (the last prompt token, or the text
tokens) are recomputed from the attention module's own projections of the layer input: q/k projection,
the per-head q/k norms where the family has them (Qwen3), rotary embedding, GQA head sharing, the
module's scaling, and the causal + padding mask. Softmax runs in float32 like transformers' eager path,
so the result equals the eager attention weights of those rows averaged over heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _heads(attention: nn.Module, projection: str, norm: str, x: Tensor, gated: bool = False) -> Tensor:
    """(B, H, L, head_dim) from one projection of ``x`` (B, L, D), with the family's per-head norm.

    ``gated``: each head's projection is followed by as many output-gate channels (Qwen3.5's q_proj), dropped."""
    states = getattr(attention, projection)(x)
    if gated:
        states = states.view(*x.shape[:-1], -1, 2 * attention.head_dim)[..., :attention.head_dim]
    states = states.reshape(*x.shape[:-1], -1, attention.head_dim)
    head_norm = getattr(attention, norm, None)
    if head_norm is not None:
        states = head_norm(states)
    return states.transpose(1, 2)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding as every supported family applies it (rotate-half; M-RoPE is folded into cos/sin), on
    the first ``cos.shape[-1]`` channels of each head (partial rotary, as Qwen3.5: the rest pass unrotated)."""
    if cos.shape[-1] < x.shape[-1]:
        rotary = cos.shape[-1]
        return torch.cat((_rotate(x[..., :rotary], cos, sin), x[..., rotary:]), dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def attention_to_keys(
    attention: nn.Module,
    layer_input: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    queries: Tensor,
    query_weight: Tensor,
    key_valid: Tensor,
    gated_queries: bool = False,
) -> Tensor:
    """Head-averaged attention of the ``queries`` rows, averaged with ``query_weight``: (B, L) float32.

    ``layer_input``: (B, L, D) the normalised hidden states the attention module receives.
    ``queries``: (B, Q) column of each query row; ``query_weight``: (B, Q) weights summing to 1 per row
    (0 for padding entries). ``key_valid``: (B, L) False on padding keys. Keys after a query are masked
    (causal), as the model's own attention does. ``gated_queries``: the q projection carries an output gate
    per head (Qwen3.5), which weights the attention output, not the attention itself.
    """
    cos, sin = position_embeddings
    batch = layer_input.shape[0]
    cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)
    query_rows = queries.unsqueeze(-1)
    rotary_rows = query_rows.expand(-1, -1, cos.shape[-1])  # cos and sin share their width
    q = _rotate(
        _heads(attention, "q_proj", "q_norm", layer_input.gather(1, query_rows.expand(-1, -1, layer_input.shape[-1])),
               gated_queries),
        cos.gather(1, rotary_rows),
        sin.gather(1, rotary_rows),
    )
    k = _rotate(_heads(attention, "k_proj", "k_norm", layer_input), cos, sin)
    if q.shape[1] != k.shape[1]:  # grouped-query attention (repeat_interleave dispatches ops even for one repeat)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q @ k.transpose(-1, -2)).float() * attention.scaling  # (B, H, Q, L)
    columns = torch.arange(layer_input.shape[1], device=layer_input.device)
    allowed = key_valid.unsqueeze(1) & (columns.view(1, 1, -1) <= query_rows)  # (B, Q, L)
    logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    probabilities = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(1)  # (B, Q, L)
    return (probabilities * query_weight.unsqueeze(-1).float()).sum(1)
