"""PPE in the decoder: give every decoder layer rotary cos/sin built from per-chunk positions.

The text model computes ``position_embeddings = rotary_emb(hidden, position_ids)`` once per forward
and passes it to every layer. Forward pre-hooks on the layers (installed by ``wrap``, removed by
``unwrap``, prepended so they run before the in-LLM stage's hooks; no model code replaced) swap it,
during every full pass (prefill, or each step of an uncached generate), for cos/sin in which rotary
frequency f of prompt column j rotates with ``chunk_positions[:, j, chunk(f)]``:

* the model's own rotary module is evaluated on every chunk's positions (one call, chunks stacked along
  the batch axis), and frequency f (both of its rotate-half dimensions, f and f + d/2) is taken from
  the evaluation of its chunk. Every rope type, M-RoPE's t/h/w sections and Qwen3-VL's interleaving
  are thus the model's own; a column whose chunks all hold one position gets exactly the model's
  cos/sin;
* the chunk of each frequency is probed once from the rotary module: the frequencies that read axis a
  (t, h or w; the single axis of 1-D RoPE) are split, in frequency order, into ``chunks`` contiguous
  bands (the k-th of n frequencies is in band floor(k * chunks / n)), so with M-RoPE every axis section
  is split into the same number of bands, as in the paper ([16, 24, 24] with 8 chunks: 2/3/3 frequencies
  per band). Band 0 holds each axis's highest frequencies;
* columns after the prompt (tokens an uncached generate appended) keep the model's cos/sin.

Cached steps are left alone: new tokens have one position each, the model's. The in-LLM stage gathers
whatever cos/sin a layer receives at its kept columns, so a token it keeps keeps its chunk positions
and a token it merges lives on in its destination, with the destination's.

Cost: the rotary embedding of the prompt evaluated for ``chunks`` positions per column, once per full
pass (not per layer; elementwise, O(chunks * L * d)); nothing per decoding step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vtr.errors import ReductionError
from vtr.llm.cache import FullPasses

SEQUENCE_DEPENDENT_ROPE = ("dynamic", "longrope")


@dataclass
class PPERun:
    """One reduced call: ``chunk_positions`` (R, B, L, C) of its prompt's columns."""

    chunk_positions: Tensor


def _rotary(module: nn.Module, like: Tensor, positions: Tensor, kind: str | None = None) -> tuple[Tensor, Tensor]:
    """The model's rotary module on rope positions (R, B, L): 1-D RoPE takes (B, L), M-RoPE (3, B, L); ``kind``:
    the layer type a per-type rotary module (Gemma 3 / 4) also takes."""
    positions = positions[0] if positions.shape[0] == 1 else positions
    return module(like, positions) if kind is None else module(like, positions, kind)


def frequency_chunks(rotary: nn.Module, rows: int, chunks: int, kind: str | None = None) -> Tensor:
    """(d,) the chunk each rotary dimension belongs to, probed from ``rotary`` (rotate-half layout). A frequency
    no position axis moves (Gemma 4's partial rotary: the unrotated dimensions) goes to chunk 0: every chunk
    gives it the same value."""
    rope_type = str(getattr(rotary, "rope_type", "default"))
    rope_type = str(rope_type.get(kind, rope_type)) if isinstance(rope_type, dict) else rope_type
    if any(kind in rope_type for kind in SEQUENCE_DEPENDENT_ROPE):
        raise ReductionError(f"positions='ppe' evaluates the rotary embedding per chunk, which {rope_type!r} RoPE "
                             f"would rescale by each chunk's own length; use positions='original' with this model")
    device = next(rotary.buffers()).device
    like = torch.zeros(1, device=device)
    with torch.no_grad():
        probe = torch.eye(rows, dtype=torch.long, device=device).unsqueeze(-1)  # batch a: axis a at 1, others 0
        cos, sin = _rotary(rotary, like, probe.permute(1, 0, 2) if rows > 1 else probe[0], kind)
    half = sin.shape[-1] // 2
    if sin.shape[-1] % 2 or not torch.equal(sin[..., :half], sin[..., half:]):
        raise ReductionError("positions='ppe' needs rotate-half rotary embeddings (cos/sin = cat(freqs, freqs)); "
                             "this model's rotary module lays its dimensions out differently")
    reads = sin.reshape(rows, -1)[:, :half] != 0  # (axis, frequency): which axis each frequency reads
    if not bool((reads.sum(0) <= 1).all()):
        raise ReductionError("could not tell which position axis each rotary frequency reads; positions='ppe' "
                             "supports 1-D RoPE and Qwen-style M-RoPE sections")
    chunk = torch.zeros(half, dtype=torch.long, device=device)
    for axis in range(rows):
        frequencies = reads[axis].nonzero().squeeze(1)
        chunk[frequencies] = torch.arange(frequencies.numel(), device=device) * chunks // frequencies.numel()
    return torch.cat([chunk, chunk])


def chunked_rotary(rotary: nn.Module, chunk_of_dim: Tensor, chunk_positions: Tensor,
                   like: Tensor, kind: str | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin) (B, L, d) where dimension i of column j rotates with ``chunk_positions[:, :, j, chunk(i)]``.

    One rotary call on the chunks stacked along the batch axis (the rotary is elementwise in the
    positions, so each chunk's values are those of a call on that chunk alone), then per dimension
    the values of its chunk.
    """
    rows, batch, length, chunks = chunk_positions.shape
    stacked = chunk_positions.permute(0, 3, 1, 2).reshape(rows, chunks * batch, length)
    pick = chunk_of_dim.to(like.device).view(1, 1, 1, -1)
    out = []
    for values in _rotary(rotary, like, stacked, kind):
        values = values.view(chunks, batch, length, values.shape[-1])
        out.append(values.gather(0, pick.expand(1, batch, length, -1))[0])
    return out[0], out[1]


class PositionPreservation:
    """The PPE hooks of one model's decoder layers; active between ``begin`` and ``end`` of a reduced call.

    ``rotary_kinds``: per layer, the layer type a per-type rotary module takes (Gemma 3 / 4: local and global
    layers rotate differently), or none; ``cache_layers``: per layer, the layer whose cache it reads (Gemma 4's
    KV-sharing layers hold none and run in the pass of the layer before them)."""

    def __init__(self, decoder: nn.Module, rows: int, chunks: int, rotary_kinds: tuple[str | None, ...] = (),
                 cache_layers: tuple[int, ...] = ()) -> None:
        self.rotary = decoder.rotary_emb
        layers = len(decoder.layers)
        self.kinds = tuple(rotary_kinds) + (None,) * (layers - len(rotary_kinds))
        self.full_passes = FullPasses(cache_layers, layers)
        self.chunk_of_dim = {kind: frequency_chunks(self.rotary, rows, chunks, kind) for kind in set(self.kinds)}
        self.run: PPERun | None = None
        self._last: dict[str | None, tuple[Tensor, tuple[Tensor, Tensor]]] = {}  # per kind: (model's cos, ours)
        self._handles = [layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True, prepend=True)
                         for i, layer in enumerate(decoder.layers)]

    def begin(self, chunk_positions: Tensor) -> None:
        self.run, self._last = PPERun(chunk_positions), {}

    def end(self) -> None:
        """After the call: later cached steps on its cache have single positions, nothing to keep alive."""
        self.run, self._last = None, {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.end()

    def _layer_hook(self, layer: int):
        kind = self.kinds[layer]

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self.run is None or not self.full_passes(kwargs, layer):
                return None  # not ours, or a cached step: its new tokens have their own single positions
            cos, sin = kwargs["position_embeddings"]
            last = self._last.get(kind)
            if last is not None and cos.shape[1] < last[0].shape[1]:  # the model kept only its last columns
                ours = tuple(t[:, -cos.shape[1]:] for t in last[1])
                return args, {**kwargs, "position_embeddings": ours}
            if last is None or last[0] is not cos:  # every layer of a kind gets the same tensors in a pass
                self._last[kind] = last = (cos, self._preserved(cos, sin, kind))
            return args, {**kwargs, "position_embeddings": last[1]}

        return hook

    def _preserved(self, cos: Tensor, sin: Tensor, kind: str | None) -> tuple[Tensor, Tensor]:
        chunk_positions = self.run.chunk_positions
        prompt_rows, prompt_len = chunk_positions.shape[1:3]
        batch, length = cos.shape[0], cos.shape[1]
        if length < prompt_len or batch % prompt_rows:
            raise ReductionError(f"PPE was set up for a {prompt_rows}x{prompt_len}-token prompt, got a pass of "
                                 f"{batch}x{length} tokens; call generate()/forward() with the inputs vtr reduced")
        chunk_positions = chunk_positions.repeat_interleave(batch // prompt_rows, dim=1)  # beams repeat rows
        with torch.no_grad():
            prompt_cos, prompt_sin = chunked_rotary(self.rotary, self.chunk_of_dim[kind],
                                                    chunk_positions.to(cos.device), cos, kind)
        return (torch.cat([prompt_cos, cos[:, prompt_len:]], 1), torch.cat([prompt_sin, sin[:, prompt_len:]], 1))
