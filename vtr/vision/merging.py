"""Token merging inside the vision encoder, by hooks on its layers (no model code replaced).

For one encoder call, with hooks installed by ``EncoderMerging.installed()`` and removed afterwards
(also on error):

* after each merging layer (0 .. the feature layer), a forward hook pairs A and B tokens by the cosine
  similarity of that layer's attention keys averaged over heads (a forward hook on ``k_proj`` keeps
  them), asks the method's matcher which A tokens merge, and returns the merged, shorter hidden states;
* before every later layer, a forward pre-hook passes proportional attention as an additive float mask
  (``log(size)`` per key column, ``-inf`` on padding), which SDPA and eager attention both accept.

Deviation from ToMe/DyMU: they merge between a block's attention and its MLP; a hook can only act on a
layer's output, so here the merge follows the MLP, with the keys of the same layer's attention. The
merging hook runs before transformers' own output recorders, so ``hidden_states`` (and the LLaVA
features read from them) are the merged sequences. The class token (``MergeTarget.protected``) is never
merged; SigLIP has none, so every patch may merge. Whatever count a matcher asks for, a layer merges at
most half of its unprotected tokens (``MergeState.caps``, the reference's cap), which DyMU's thresholds
could otherwise exceed by one on SigLIP's odd-length sequences; the most similar tokens merge.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from vtr.errors import ReductionError
from vtr.methods.base import Reduction
from vtr.methods.vision import EncoderGeometry, Matcher
from vtr.ops.matching import MergeState, bipartite_matching, merge_tokens


@dataclass(frozen=True)
class MergeTarget:
    """Where an adapter lets a vision method merge."""

    layers: nn.ModuleList  # the encoder layers (each with ``self_attn.k_proj`` and ``self_attn.head_dim``)
    merge_layers: int  # merges follow layers 0 .. merge_layers - 1: up to the layer the features come from
    dropped: int  # leading tokens the model drops before the projector (the class token, or none)
    tower: nn.Module | None = None  # the vision tower, run on (N, C, H, W) pixels (calibration)
    protected: int = 1  # leading tokens that never merge: CLIP's class token (SigLIP has none)

    def full_size_geometry(self) -> EncoderGeometry:
        """The geometry of an encoder call at the tower's input size, which every sequence of the LLaVA
        family has (base images, AnyRes crops and video frames are all resized to it): what ``wrap`` checks a
        vision method's plan against (a threshold per layer, a reachable budget) before any call."""
        config = self.tower.config
        tokens = (config.image_size // config.patch_size) ** 2 + self.protected
        return EncoderGeometry(tokens=tokens, features=tokens - self.dropped, merge_layers=self.merge_layers,
                               depth=len(self.layers), protected=self.protected)


class EncoderMerging:
    """The merge state of one encoder call and the hooks that build it."""

    def __init__(self, target: MergeTarget, make_matcher: Callable[[EncoderGeometry], Matcher]) -> None:
        self.target = target
        self.make_matcher = make_matcher
        self.state: MergeState | None = None
        self.tokens_per_layer: list[tuple[int, ...]] = []  # per layer, the tokens each row processed (class token too)
        self._matcher: Matcher | None = None
        self._keys: Tensor | None = None
        self._merged = False

    @contextlib.contextmanager
    def installed(self) -> Iterator["EncoderMerging"]:
        handles = []
        try:
            for i, layer in enumerate(self.target.layers):
                handles.append(layer.register_forward_pre_hook(self._before(i), with_kwargs=True))
                if i < self.target.merge_layers:
                    handles.append(layer.self_attn.k_proj.register_forward_hook(self._keep_keys))
                    handles.append(layer.register_forward_hook(self._after(i), prepend=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ hooks
    def _begin(self, hidden: Tensor) -> None:
        batch, tokens = hidden.shape[:2]
        geometry = EncoderGeometry(tokens=tokens, features=tokens - self.target.dropped,
                                   merge_layers=self.target.merge_layers, depth=len(self.target.layers),
                                   protected=self.target.protected)
        self._matcher = self.make_matcher(geometry)
        self.state = MergeState.start(batch, tokens, hidden.device)
        self.tokens_per_layer, self._merged = [], False

    def _before(self, layer: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            hidden = args[0] if args else kwargs["hidden_states"]
            if layer == 0:
                self._begin(hidden)
            self.tokens_per_layer.append(self.state.lengths)
            if not self._merged:
                return None
            bias = self.state.attention_bias(hidden.dtype)
            if len(args) > 1:  # CLIPEncoderLayer(hidden_states, attention_mask)
                return (args[0], _added(args[1], bias), *args[2:]), kwargs
            return args, {**kwargs, "attention_mask": _added(kwargs.get("attention_mask"), bias)}

        return hook

    def _keep_keys(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._keys = output

    def _after(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple):
            hidden = output[0] if isinstance(output, tuple) else output
            if not self._matcher.active(layer) or hidden.shape[1] < 2 + self.target.protected:
                return None
            metric = self._keys.view(*hidden.shape[:2], -1, module.self_attn.head_dim).mean(2)
            matching = bipartite_matching(metric, self.state, self.target.protected)
            wanted = self._matcher.merges(layer, matching.similarity)
            counts = tuple(min(n, cap) for n, cap in zip(wanted, self.state.caps(self.target.protected)))
            if not any(counts):
                return None
            chosen = matching.ranked(max(counts))
            hidden, self.state = merge_tokens(hidden, self.state, matching, chosen, counts)
            self._merged = True
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    # ------------------------------------------------------------------ results
    def _final_state(self) -> MergeState:
        if self.state is None:
            raise ReductionError("the vision encoder never ran its first layer under vtr's merging hooks; this "
                                 "adapter's merge target does not match the model's encoder")
        return self.state

    def per_layer_counts(self) -> list[tuple[int, ...]]:
        """Per encoder row, the tokens each encoder layer processed in the last call, class token included (the
        merge keeps them on the host)."""
        self._final_state()
        return list(zip(*self.tokens_per_layer))

    def feature_counts(self) -> list[int]:
        """Per encoder row, the feature tokens it hands the projector (after the last merge, minus the tokens
        the model drops)."""
        return [n - self.target.dropped for n in self._final_state().lengths]

    def spread_rows(self, features: Tensor) -> Tensor:
        """(B, merged feature tokens, D) -> (B, original feature tokens, D): every original token carries the
        features of the merged token it belongs to (the model's merged features are padded: valid first)."""
        dropped, state = self.target.dropped, self._final_state()
        if features.shape[:2] != (state.size.shape[0], state.size.shape[1] - dropped):
            raise ReductionError(f"the encoder's features have shape {tuple(features.shape)}, the merged sequences "
                                 f"{state.size.shape[0]} x {state.size.shape[1] - dropped}: they do not come from them")
        index = (state.source[:, dropped:] - dropped).to(features.device)
        return features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))

    def spread(self, features: list[Tensor]) -> list[Tensor]:
        """``spread_rows`` of per-row features (one encoder sequence per item)."""
        return list(self.spread_rows(torch.stack(features)).unbind(0)) if features else []

    def assignment(self, row: int) -> Tensor:
        """(original feature tokens,) the merged token (index among the row's features) each one went into."""
        return self._final_state().source[row, self.target.dropped:] - self.target.dropped

    def reductions(self, spread: list[Tensor]) -> list[Reduction]:
        """One reduction per encoder row over its original feature tokens, from the ``spread`` features."""
        dropped, state = self.target.dropped, self._final_state()
        out = []
        for row, (feats, length) in enumerate(zip(spread, state.lengths)):
            kept = (state.slot[row, dropped:length] - dropped).to(feats.device)
            out.append(Reduction(kept=kept, features=feats[kept], assignment=self.assignment(row).to(feats.device)))
        return out


def _added(mask: Tensor | None, bias: Tensor) -> Tensor:
    return bias if mask is None else mask + bias
