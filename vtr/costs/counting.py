"""The counting rules of ``torch.utils.flop_counter.FlopCounterMode``, and one visual input's geometry.

Only matrix products count; a multiply-add is 2 FLOPs, so (m x k) @ (k x n) costs 2mkn. Attention counts
as FlopCounterMode counts ``scaled_dot_product_attention``: the full Lq x Lk score matmul and the weighted
sum for every query head (masks do not reduce it; GQA key/value heads are broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass


def linear(rows: float, d_in: int, d_out: int) -> float:
    """A linear layer (or a matmul) on ``rows`` rows."""
    return 2.0 * rows * d_in * d_out


def scores(heads: int, head_dim: int, queries: float, keys: float) -> float:
    """q @ k^T of every head (the weighted sum costs the same again)."""
    return 2.0 * heads * queries * keys * head_dim


def block(rows: float, width: int, q_width: int, kv_width: int, attention: float, mlp_width: int,
          mlp_mats: int) -> float:
    """One transformer block on ``rows`` tokens: q/o, k/v projections, ``attention``, an MLP."""
    return (2 * linear(rows, width, q_width) + 2 * linear(rows, width, kv_width) + attention
            + mlp_mats * linear(rows, width, mlp_width))


@dataclass(frozen=True)
class VisualInput:
    """One image or video as the vision encoder sees it.

    ``frames``: sequences the encoder runs: LLaVA-family crops (base image + AnyRes crops) or video
    frames; Qwen-VL temporal patches (``grid_thw[0]``). ``height`` x ``width``: the patch grid of each
    (Qwen-VL: before merging, as in ``grid_thw``). ``encoder_tokens``: the tokens each encoder layer
    processed where that is not the patch grid: after a vision-stage merge (LLaVA-1.5; class token
    included, and ``projected``, the tokens the projector saw), or a sequence padded to the processor's
    patch budget (Gemma 4).
    """

    modality: str
    frames: int
    height: int
    width: int
    encoder_tokens: tuple[int, ...] = ()
    projected: int | None = None

    @property
    def patches(self) -> int:
        return self.frames * self.height * self.width
