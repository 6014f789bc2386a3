"""Virtual token unmerging (VTU, DyMU): the LLM attends as if every original patch were present at its
own position, while its MLPs and norms run on the merged tokens.

The engine gives the LLM the unshrunk prompt, every placeholder carrying the features of the merged
token it belongs to, so transformers builds its positions, rotary cos/sin, causal mask and KV cache for
the original length N and decoding needs nothing special. Hooks on the decoder layers (installed by
``wrap``, removed by ``unwrap``; no model code replaced) do the rest on every full pass (prefill, or a
step of an uncached generate):

* before layer 0, the hidden states are compressed to one column per merged token (copies are equal,
  so taking the representative's column is exact) plus every text column: N_un columns;
* around every attention module, its input (the normed hidden states) is expanded back to the N
  columns by the provenance, the module runs with the model's own full-length cos/sin and mask, and
  its output is re-merged by the mean over each merged token's copies;
* after the last layer, the hidden states are expanded to N again, so logits line up with the prompt.

This is the reference's VTU exactly (O_un = (M^T M)^-1 M^T softmax(RoPE(MQ) RoPE(MK)^T) MV, attention
at the true position of every copy); the output projection commutes with the group mean.

Cost: the attention modules run entirely at the original length (q/k/v/o projections on N rows, the
N x N attention) and the KV cache holds N keys per layer, exactly as without merging; only the MLPs,
norms and residuals run on the N_un merged tokens. The reference gathers q/k/v after projecting the
merged tokens, which saves the projections too, but that needs a replaced attention forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vtr.errors import ReductionError
from vtr.llm.cache import passed_cache


@dataclass
class UnmergeRun:
    """One reduced call: ``representative`` (B, L) is the prompt column whose token each column copies."""

    representative: Tensor


@dataclass
class _Pass:
    """How one full pass maps between its N columns and its N_un merged columns (W = the widest row).

    Every decoder layer spreads and re-merges through the same mapping, so the mapping expanded over the
    hidden width is made once per pass and device (the layers of a split model run on several) and reused."""

    mapping: Tensor  # (B, N) merged column of every column
    members: Tensor  # (B, W) the column each merged column is read from (pad slots read column 0)
    _on: dict[tuple[torch.device, int], Tensor] = field(default_factory=dict)

    def spread(self, device: torch.device, width: int) -> Tensor:
        """(B, N, width) the mapping expanded over ``width``, on ``device``."""
        key = (device, width)
        if key not in self._on:
            self._on[key] = self.mapping.to(device).unsqueeze(-1).expand(-1, -1, width)
        return self._on[key]


def _rows(values: Tensor, index: Tensor) -> Tensor:
    """``values`` (B, L, D) at the columns ``index`` (B, M) (moved to the values' device: the layers of a split
    model run on several)."""
    return values.gather(1, index.to(values.device).unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class VirtualUnmerging:
    """The VTU hooks of one model's decoder layers; ``run`` is set for the duration of a reduced call."""

    def __init__(self, decoder: nn.Module) -> None:
        layers = decoder.layers
        self.run: UnmergeRun | None = None
        self._pass: _Pass | None = None
        self._handles = [layers[0].register_forward_pre_hook(self._compress, with_kwargs=True),
                         layers[-1].register_forward_hook(self._expand_output, prepend=True)]
        for layer in layers:
            self._handles.append(layer.self_attn.register_forward_pre_hook(self._expand_input, with_kwargs=True))
            self._handles.append(layer.self_attn.register_forward_hook(self._remerge))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _plan(self, batch: int, length: int, device: torch.device) -> _Pass:
        representative = self.run.representative.to(device)
        prompt_rows, prompt_len = representative.shape
        if length < prompt_len or batch % prompt_rows:
            raise ReductionError(f"virtual unmerging was set up for a {prompt_len}-token prompt, got a pass of "
                                 f"{batch}x{length} tokens; call generate()/forward() with the inputs vtr reduced")
        columns = torch.arange(length, device=device).expand(batch, -1)
        representative = representative.repeat_interleave(batch // prompt_rows, dim=0)
        representative = torch.cat([representative, columns[:, prompt_len:]], dim=1)  # generated tokens: themselves
        is_own = representative == columns
        rank = is_own.long().cumsum(1) - 1
        members = torch.zeros(batch, int(is_own.sum(1).max()), dtype=torch.long, device=device)
        rows, cols = is_own.nonzero(as_tuple=True)
        members[rows, rank[rows, cols]] = cols
        return _Pass(mapping=rank.gather(1, representative), members=members)

    def _compress(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        self._pass = None
        cache = passed_cache(kwargs)
        if self.run is None or (cache is not None and cache.get_seq_length(0) > 0):
            return None  # not ours, or a cached decoding step: new tokens are never merged
        states = args[0] if args else kwargs["hidden_states"]
        self._pass = self._plan(states.shape[0], states.shape[1], states.device)
        return _with_states(args, kwargs, _rows(states, self._pass.members))

    def _expand_input(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if self._pass is None:
            return None
        states = args[0] if args else kwargs["hidden_states"]
        return _with_states(args, kwargs, states.gather(1, self._pass.spread(states.device, states.shape[-1])))

    def _remerge(self, module: nn.Module, args: tuple, output: tuple):
        """The mean of each merged token's copies, accumulated in float32 (one scatter-mean: pad slots, which
        no column maps to, stay zero)."""
        if self._pass is None:
            return None
        attended, *rest = output
        spread = self._pass.spread(attended.device, attended.shape[-1])
        merged = attended.new_zeros((*self._pass.members.shape, attended.shape[-1]), dtype=torch.float32)
        merged = merged.scatter_reduce_(1, spread, attended.float(), "mean", include_self=False)
        return (merged.to(attended.dtype), *rest)

    def _expand_output(self, module: nn.Module, args: tuple, output: Tensor):
        if self._pass is None:
            return None
        expanded = output.gather(1, self._pass.spread(output.device, output.shape[-1]))
        self._pass = None
        return expanded


def _with_states(args: tuple, kwargs: dict[str, Any], states: Tensor) -> tuple[tuple, dict[str, Any]]:
    if args:
        return (states, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": states}
