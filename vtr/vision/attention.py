"""Attention inside the vision encoder, recomputed from q/k under any attention implementation.

SDPA and flash attention return no weights, and forcing eager on the encoder costs memory and time.
A forward pre-hook on a chosen encoder layer's attention module keeps its input; the scores a method
needs are then recomputed from the module's own projections (and rotary embedding, for the Qwen ViT)
segment by segment, so windowed attention (Qwen2.5-VL, ``cu_seqlens``) is scored exactly as the model
attends. Softmax runs in float32, like transformers' eager path.

Two reductions over the query rows are offered: ``"cls"`` (the attention the CLS token pays every
token; CLIP) and ``"received"`` (mean over every query row: the attention a token receives; encoders
without CLS, and HiPrune's "global attention"). Keys averaged over heads are returned as well (VisionZip
merges contextual tokens by key similarity).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

@dataclass(frozen=True)
class LayerAttention:
    """Per encoder sequence (an image, crop or attention segment): scores (n,) and mean keys (n, head_dim)."""

    scores: list[Tensor]
    keys: list[Tensor]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# attention-map entries computed at once, however many frames a video has. On a CPU a block of 8 MB (float32) is
# reused by the allocator from chunk to chunk, where larger ones map fresh pages on every call; CUDA's caching
# allocator keeps any size, so there chunks are larger (128 MB) and fewer kernels run; other devices: the CPU's
CHUNK_ENTRIES = {"cpu": 1 << 21, "cuda": 1 << 25}
# the most entries one sequence's map may hold at once on any device (128 MB of float32, as many again for its
# softmax); a larger one is scored a few query rows at a time (``_summed_over_rows``). The same on every device,
# so the CPU proxies dispatch the parts a GPU does.
MAP_ENTRIES = 1 << 25


def _in_chunks(score: Callable[..., Tensor], entries: int, *tensors: Tensor) -> Tensor:
    """``score`` over the sequences (dim 0) of ``tensors``, a chunk of at most ``CHUNK_ENTRIES`` attention-map
    entries (``entries`` per sequence) at a time, so a long video never holds all its maps at once (a sequence
    whose map alone is larger goes alone; beyond ``MAP_ENTRIES``, ``score`` splits its query rows)."""
    step = max(1, CHUNK_ENTRIES.get(tensors[0].device.type, CHUNK_ENTRIES["cpu"]) // entries)
    if step >= tensors[0].shape[0]:
        return score(*tensors)
    return torch.cat([score(*chunk) for chunk in zip(*(t.split(step) for t in tensors))])


def _summed_over_rows(rows_sum: Callable[[slice], Tensor], rows: int, row_entries: int) -> Tensor:
    """``sum(rows_sum(part))`` over the query rows in parts of at most ``MAP_ENTRIES`` map entries
    (``row_entries`` per row), for a map too large to hold at once: a high-resolution image in one attention
    segment (Qwen2.5-VL's full-attention layers, the Qwen3-VL ViT, Gemma 3's 4,096 patches, Gemma 4's larger
    budgets) would otherwise take several GB for scores that the model's own flash/SDPA attention computes
    without a map. Softmax is per query row, so the parts' sums add up to the whole map's."""
    step = max(1, MAP_ENTRIES // row_entries)
    total = rows_sum(slice(0, step))
    for start in range(step, rows, step):
        total = total + rows_sum(slice(start, start + step))
    return total


def _probabilities(q: Tensor, k: Tensor, scale: float, query: str) -> Tensor:
    """(S, H, n, hd) or (H, n, hd) q/k -> (S, n) or (n,) head-averaged attention of the requested query rows.

    The map is the costly part (S x H x n x n): the scale goes into q (n x hd values) instead of the map,
    heads and query rows are averaged in one reduction, and sequences (a video's frames) go in chunks, the
    query rows of a sequence whose map alone exceeds ``MAP_ENTRIES`` in parts.
    """
    if query == "cls":
        q = q[..., :1, :]
    q, keys = q.float() * scale, k.float().transpose(-1, -2)
    heads, rows, key_count = q.shape[-3], q.shape[-2], keys.shape[-1]

    def score(queries: Tensor, key_columns: Tensor) -> Tensor:
        row_entries = queries.shape[:-3].numel() * heads * key_count
        if row_entries * rows <= MAP_ENTRIES:
            return torch.softmax(queries @ key_columns, dim=-1).mean((-3, -2))

        def part_sum(part: slice) -> Tensor:
            return torch.softmax(queries[..., part, :] @ key_columns, dim=-1).sum((-3, -2))

        return _summed_over_rows(part_sum, rows, row_entries) / (heads * rows)

    if q.dim() == 3:  # (H, n, hd): one sequence, one map
        return score(q, keys)
    return _in_chunks(score, heads * rows * key_count, q, keys)


def clip_like_attention(attention: nn.Module, hidden_states: Tensor, query: str) -> LayerAttention:
    """CLIP / SigLIP attention (separate q/k projections, no rotary) on (B, L, D) inputs."""
    shape = (*hidden_states.shape[:-1], -1, attention.head_dim)
    q = attention.q_proj(hidden_states).view(shape).transpose(1, 2)
    k = attention.k_proj(hidden_states).view(shape).transpose(1, 2)
    scores = _probabilities(q, k, attention.scale, query)
    return LayerAttention(list(scores.unbind(0)), list(k.float().mean(1).unbind(0)))


def internvit_attention(attention: nn.Module, hidden_states: Tensor, query: str) -> LayerAttention:
    """InternViT attention (separate q/k projections, optional q/k RMS norm over the whole width, no rotary)
    on (B, L, D) inputs, one result per tile."""
    shape = (*hidden_states.shape[:-1], -1, attention.head_dim)
    q = attention.q_norm(attention.q_proj(hidden_states)).view(shape).transpose(1, 2)
    k = attention.k_norm(attention.k_proj(hidden_states)).view(shape).transpose(1, 2)
    scores = _probabilities(q, k, attention.scale, query)
    return LayerAttention(list(scores.unbind(0)), list(k.float().mean(1).unbind(0)))

def _axial_rotary(x: Tensor, cos: Tensor, sin: Tensor, axes: int) -> Tensor:
    """Rotate-half rotary applied to ``axes`` equal slices of the head width, each with its slice of cos/sin
    (Gemma 4's 2-D rotary: the first half of a head rotates with x, the second with y); (B, L, H, hd) inputs."""
    width = x.shape[-1] // axes
    parts = [part * c.unsqueeze(2) + _rotate_half(part) * s.unsqueeze(2)
             for part, c, s in zip(x.split(width, -1), cos.split(width, -1), sin.split(width, -1))]
    return torch.cat(parts, -1)


def gemma4_vit_attention(attention: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor],
                         positions: Tensor, query: str) -> LayerAttention:
    """Gemma 4 vision attention (q/k projections and RMS norms per head, 2-D rotary, no scaling) on (B, N, D)
    inputs whose padding patches sit at ``positions`` (B, N, 2) of -1: they are no keys, and ``"received"``
    averages over the valid query rows only, as the model's bidirectional padding mask attends."""
    shape = (*hidden_states.shape[:-1], -1, attention.head_dim)
    cos, sin = position_embeddings
    axes = positions.shape[-1]
    q = _axial_rotary(attention.q_norm(attention.q_proj(hidden_states).view(shape)), cos, sin, axes).transpose(1, 2)
    k = _axial_rotary(attention.k_norm(attention.k_proj(hidden_states).view(shape)), cos, sin, axes).transpose(1, 2)
    valid = (positions != -1).all(-1)  # (B, N)

    def score(rows: Tensor, columns: Tensor, keep: Tensor) -> Tensor:
        def weights_of(queries: Tensor) -> Tensor:  # (b, H, n, N): the pass a map cannot avoid
            logits = queries.float() @ columns.float().transpose(-1, -2)
            if attention.scaling != 1.0:
                logits = logits * attention.scaling
            return torch.softmax(logits.masked_fill_(~keep[:, None, None, :], float("-inf")), dim=-1)

        if query == "cls":
            return weights_of(rows[:, :, :1])[:, :, 0].mean(1)
        # the heads' mean over valid query rows, as one contraction instead of a mean and a masked sum
        weight = keep.float()
        row_entries = rows.shape[0] * rows.shape[1] * columns.shape[2]
        if row_entries * rows.shape[2] <= MAP_ENTRIES:
            received = torch.einsum("bhqk,bq->bk", weights_of(rows), weight)
        else:
            def part_sum(part: slice) -> Tensor:
                return torch.einsum("bhqk,bq->bk", weights_of(rows[:, :, part]), weight[:, part])

            received = _summed_over_rows(part_sum, rows.shape[2], row_entries)
        return received / (weight.sum(1, keepdim=True) * rows.shape[1])

    scores = _in_chunks(score, q.shape[1] * q.shape[2] * k.shape[2], q, k, valid)
    return LayerAttention(list(scores.unbind(0)), list(k.float().mean(1).unbind(0)))


def qwen_vit_attention(attention: nn.Module, hidden_states: Tensor, cu_seqlens: Tensor,
                       position_embeddings: tuple[Tensor, Tensor], query: str) -> LayerAttention:
    """Qwen ViT attention (fused qkv, 2-D rotary) on (T, D) inputs, one result per ``cu_seqlens`` segment.

    The loop is over attention segments (windows or images), each a block of the model's own attention.
    """
    length = hidden_states.shape[0]
    q, k, _ = attention.qkv(hidden_states).reshape(length, 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = (t.unsqueeze(-2).float() for t in position_embeddings)
    q = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype).transpose(0, 1)  # (H, T, hd)
    k = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype).transpose(0, 1)
    bounds = cu_seqlens.tolist()
    scores, keys = [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        scores.append(_probabilities(q[:, start:end], k[:, start:end], attention.scaling, query))
        keys.append(k[:, start:end].float().mean(0))
    return LayerAttention(scores, keys)


class AttentionCapture:
    """Keeps the inputs of chosen attention modules during one encoder call."""

    def __init__(self) -> None:
        self.inputs: dict[int, tuple[tuple, dict]] = {}
        self.window_index: Tensor | None = None  # Qwen2.5-VL: the encoder's order of merge units

    def hidden_states(self, layer: int) -> tuple[Tensor, dict]:
        """The hidden states layer ``layer``'s attention module got, and the keyword arguments of that call
        (rotary embeddings, masks, segment bounds)."""
        args, kwargs = self.inputs[layer]
        return (args[0] if args else kwargs["hidden_states"]), kwargs

    @contextlib.contextmanager
    def on(self, modules: dict[int, nn.Module]) -> Iterator["AttentionCapture"]:
        def keep(layer: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict):
                self.inputs[layer] = (args, kwargs)

            return hook

        handles = [m.register_forward_pre_hook(keep(layer), with_kwargs=True) for layer, m in modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
