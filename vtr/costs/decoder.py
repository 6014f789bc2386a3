"""The LLM's decoder as data: per layer, a token mixer (softmax attention, full or sliding-window; other
kinds a family describes) and a feed-forward (dense gated MLP, or a mixture of experts), read from the
text config, so that a family whose decoder has only these kinds needs no code of its own to be costed.

Counting rules: ``vtr.costs.counting``. A prefill layer runs its tokens against every key: sdpa's
formula ignores masks, so a sliding window does not shorten the prefill's attention; during decoding a
sliding-window layer's cache holds ``window - 1`` keys (transformers' ``DynamicSlidingWindowLayer``), so a
step attends to at most ``window`` keys. A mixture of experts costs its router, ``active`` experts per
token and its shared expert (with its sigmoid gate) on every token.

Mixer kinds are the text config's ``layer_types`` entries (without them, every layer is
``"sliding_attention"`` where the config has a ``sliding_window``, else ``"full_attention"``). A kind
this module does not know (e.g. ``"linear_attention"``) is described by the family's costs, which pass a
builder for it to ``decoder_from_config`` (``mixers=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from vtr.costs.counting import linear, scores


class Mixer(Protocol):
    """A decoder layer's token mixer (attention or another kind)."""

    def flops(self, hidden: int, queries: float, keys: float) -> float:
        """``queries`` tokens against ``keys`` keys (prefill: both are the layer's tokens)."""

    def decode_flops(self, hidden: int, cached: int, steps: int) -> float:
        """Decoding steps 1 .. ``steps``: step j runs one token against ``cached + j`` keys."""


class FeedForward(Protocol):
    def flops(self, hidden: int, rows: float) -> float:
        """The feed-forward on ``rows`` tokens."""


@dataclass(frozen=True)
class Attention:
    """Softmax attention: q/o projections of ``heads * head_dim``, k/v of ``kv_heads * head_dim``, and the
    score and weighted-sum matmuls of every query head; ``window``: a sliding window (decoding only);
    ``gate``: the q projection also yields a per-head output gate (Qwen3.5), twice as wide;
    ``kv_projections``: the k/v projections the layer runs itself."""

    heads: int
    kv_heads: int
    head_dim: int
    window: int | None = None
    gate: bool = False
    kv_projections: int = 2  # 1: keys are the values (Gemma 4's k_eq_v); 0: keys shared from an earlier layer

    @property
    def query_width(self) -> int:
        """Output width of the q projection (queries, and their gates where the attention has them)."""
        return self.heads * self.head_dim * (2 if self.gate else 1)

    def projections(self, hidden: int, rows: float) -> float:
        return (linear(rows, hidden, self.query_width) + linear(rows, self.heads * self.head_dim, hidden)
                + self.kv_projections * linear(rows, hidden, self.kv_heads * self.head_dim))

    def flops(self, hidden: int, queries: float, keys: float) -> float:
        return self.projections(hidden, queries) + 2 * scores(self.heads, self.head_dim, queries, keys)

    def decode_flops(self, hidden: int, cached: int, steps: int) -> float:
        # attention is linear in the keys: the steps sum in closed form (keys of step j: cached + j,
        # capped at the window)
        uncapped = steps if self.window is None else min(max(self.window - cached, 0), steps)
        keys = uncapped * cached + uncapped * (uncapped + 1) / 2 + (steps - uncapped) * (self.window or 0)
        return steps * self.projections(hidden, 1) + 2 * scores(self.heads, self.head_dim, 1, keys)


@dataclass(frozen=True)
class DenseMLP:
    """``mats`` matmuls of ``hidden x width`` (3: gated, as every supported LLM's)."""

    width: int
    mats: int = 3

    def flops(self, hidden: int, rows: float) -> float:
        return self.mats * linear(rows, hidden, self.width)


@dataclass(frozen=True)
class MixtureOfExperts:
    """A router over ``experts``, ``active`` gated experts of ``width`` per token, and a shared gated expert
    of ``shared_width`` (0: none) with a one-output gate."""

    experts: int
    active: int
    width: int
    shared_width: int = 0

    def flops(self, hidden: int, rows: float) -> float:
        shared = 3 * linear(rows, hidden, self.shared_width) + linear(rows, hidden, 1) if self.shared_width else 0.0
        return linear(rows, hidden, self.experts) + self.active * 3 * linear(rows, hidden, self.width) + shared


@dataclass(frozen=True)
class Branches:
    """Several feed-forward branches of one layer on the same rows (Gemma 4: a dense MLP, a mixture of
    experts and its per-layer input branch)."""

    parts: tuple[FeedForward, ...]

    def flops(self, hidden: int, rows: float) -> float:
        return sum(part.flops(hidden, rows) for part in self.parts)


@dataclass(frozen=True)
class WidthProjection:
    """A down and an up projection through ``width`` (2: Gemma 4's per-layer input gate and projection), or
    one projection out of the hidden width (1: its per-layer input embedding projection)."""

    width: int
    mats: int = 2

    def flops(self, hidden: int, rows: float) -> float:
        return self.mats * linear(rows, hidden, self.width)


@dataclass(frozen=True)
class DecoderLayer:
    mixer: Mixer
    mlp: FeedForward


@dataclass(frozen=True)
class Decoder:
    """The decoder layers of an LLM, its width and its LM head's vocabulary."""

    hidden: int
    vocab: int
    layers: tuple[DecoderLayer, ...]
    # layers that, in a prefill whose logits are the last token's only (generate), run only that token against
    # every key: Gemma 4's KV-shared layers, which transformers slices to the kept logits
    last_token_layers: frozenset[int] = frozenset()

    def prefill_queries(self, index: int, tokens: float, last_logits: bool) -> float:
        """Queries layer ``index`` runs in a prefill of ``tokens`` tokens."""
        return 1 if last_logits and index in self.last_token_layers else tokens

    def layer_flops(self, index: int, queries: float, keys: float, mlp_rows: float | None = None) -> float:
        """Layer ``index`` running ``queries`` tokens against ``keys`` keys; ``mlp_rows``: tokens its
        feed-forward sees when they are fewer than the attention's (virtual unmerging)."""
        layer = self.layers[index]
        return (layer.mixer.flops(self.hidden, queries, keys)
                + layer.mlp.flops(self.hidden, queries if mlp_rows is None else mlp_rows))

    def lm_head(self, rows: float) -> float:
        return linear(rows, self.hidden, self.vocab)

    def decode_flops(self, cached: Sequence[int], new_tokens: int) -> float:
        """Decoding steps 1 .. ``new_tokens - 1`` (the first token comes from the prefill): one token per
        step through every layer, whose cache held ``cached[l]`` keys after the prefill, then the LM head."""
        steps = max(new_tokens - 1, 0)
        if not steps:
            return 0.0
        layers = sum(layer.mixer.decode_flops(self.hidden, n, steps) + steps * layer.mlp.flops(self.hidden, 1)
                     for layer, n in zip(self.layers, cached))
        return layers + steps * self.lm_head(1)

    def scoring_attention(self, k: int, own_layer: bool) -> Attention:
        """The softmax attention that scores visual tokens for pruning layer ``k`` (``vtr.llm.pruner``): the
        last attention layer before ``k`` (at or before it with ``own_layer``), skipping recurrent layers."""
        last = k if own_layer else k - 1
        for index in range(last, -1, -1):
            if isinstance(self.layers[index].mixer, Attention):
                return self.layers[index].mixer
        return self.attention(last)  # none: says which layer has no attention

    def attention(self, index: int) -> Attention:
        """Layer ``index``'s softmax attention (what an in-LLM method recomputes scores with)."""
        mixer = self.layers[index].mixer
        if not isinstance(mixer, Attention):
            raise ValueError(f"decoder layer {index} has no softmax attention ({type(mixer).__name__}) to score "
                             f"visual tokens with; prune at a layer after an attention layer")
        return mixer


MixerBuilder = Callable[[Any], Mixer]


def attention_from_config(text_config: Any, window: int | None = None) -> Attention:
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return Attention(heads, getattr(text_config, "num_key_value_heads", None) or heads, head_dim, window)


MIXERS: dict[str, MixerBuilder] = {
    "full_attention": attention_from_config,
    "sliding_attention": lambda tc: attention_from_config(tc, tc.sliding_window),
}


def feed_forward_from_config(text_config: Any, index: int) -> FeedForward:
    """Layer ``index``'s feed-forward: a mixture of experts where the config has experts (every
    ``decoder_sparse_step``-th layer not in ``mlp_only_layers``, the Qwen-MoE convention), else dense."""
    experts = getattr(text_config, "num_experts", None) or getattr(text_config, "num_local_experts", None)
    step = getattr(text_config, "decoder_sparse_step", None) or 1
    sparse = experts and index not in (getattr(text_config, "mlp_only_layers", None) or ()) and (index + 1) % step == 0
    if not sparse:
        return DenseMLP(text_config.intermediate_size)
    return MixtureOfExperts(experts, text_config.num_experts_per_tok,
                            getattr(text_config, "moe_intermediate_size", None) or text_config.intermediate_size,
                            getattr(text_config, "shared_expert_intermediate_size", None) or 0)


def _default_kind(text_config: Any) -> str:
    """The kind of every layer of a config without ``layer_types``, as transformers' cache infers it."""
    return "full_attention" if getattr(text_config, "sliding_window", None) is None else "sliding_attention"


def decoder_from_config(text_config: Any, mixers: Mapping[str, MixerBuilder] | None = None) -> Decoder:
    """The decoder a text config describes; ``mixers``: builders for layer kinds beyond ``MIXERS``."""
    known = {**MIXERS, **(mixers or {})}
    kinds = getattr(text_config, "layer_types", None) or [_default_kind(text_config)] * text_config.num_hidden_layers
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        raise ValueError(f"no FLOPs model for decoder layers of kind {unknown}; known kinds: {sorted(known)} "
                         f"(a family describes its own in its costs, see vtr.costs.decoder)")
    layers = tuple(DecoderLayer(known[kind](text_config), feed_forward_from_config(text_config, index))
                   for index, kind in enumerate(kinds))
    return Decoder(text_config.hidden_size, text_config.vocab_size, layers)
