"""HoliTom's outer stage (Shao et al., 2025): global temporal segmentation, then spatial merging per segment.

Faithful to ``reference/holitom-dymu.md`` PART 1 (1.2-1.6), on the projected (and pooled) features:

1. per-position cosine similarity of consecutive frames; the exact DP partitions the frames into
   windows maximising the tokens removed by collapsing each window's static positions (similarity
   strictly above ``tau`` over every consecutive pair of the window) to one token, their temporal mean;
2. the keep ratio is reallocated to what temporal merging left: ``rho' = min(rho / ((T*N - R) / (T*N)), 1)``;
3. per window, its static tokens become ``round(n_static * rho')`` DPC-KNN clusters (``k`` neighbours,
   capped at the cluster count), each merged as ``beta * centre + (1 - beta) * mean(other members)``;
   every frame of the window keeps its ``ceil(n_dynamic * rho')`` dynamic tokens receiving the most
   vision attention (the last vision layer, "received", pooled like the features);
4. output order per window as the reference lays out LLaVA-OneVision: the static merged tokens by
   centre index, then each frame's kept dynamic tokens in spatial order; windows in time order.

Positions: output token i sits in the i-th slot of its window (slots ascending, so the engine's
placeholder bookkeeping is unchanged) and, with ``positions="original"``, takes the original position
of its *origin*: a static merged token its centre's position in the window's first frame, a dynamic
token its own. ``positions="compact"`` numbers the tokens consecutively, as the reference's LLaVA
pipeline does. Provenance: a static merged token stands for every member position in every frame of
its window; each input token's weight in its output token is recorded (``Reduction.weights``), so
Qwen3-VL's deepstack features merge exactly like the main features.

Images (and any single-frame grid) have no temporal redundancy: each grid keeps its
``ceil(n * rho)`` most attended tokens (attention top-k). The reference leaves images unreduced.

Deviations: no density noise unless ``noise > 0`` (the reference adds ``1e-6 * U(0, 1)`` from the
global RNG, which makes centres random when ``k = 1``; here equal scores fall to the lowest index, as
do equal attention scores); temporal means and merges accumulate in float32; when rounding would leave
a video with no token at all, its largest static group keeps one cluster.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from vtr.budget import Budget, as_budget
from vtr.costs.counting import VisualInput, linear
from vtr.methods.base import AttentionRequest, Method, Reduction, Stage, VisionInfo, VisualItem
from vtr.methods.cost import SampleWork
from vtr.methods.hiprune import requested
from vtr.methods.options import SEED, option
from vtr.ops.dpc_knn import centre_weights, dpc_knn_centres, nearest_centre, scaled_distances
from vtr.ops.grid import group_weighted_sum
from vtr.ops.segmentation import best_segmentation, consecutive_similarity, window_counts
from vtr.stats import ItemStats

ATTENTION = "holitom"


@dataclass(frozen=True)
class _Window:
    """Frames ``first .. last`` of a grid whose features are ``frames`` (T, n, D) and whose first token is
    content index ``base``; ``static`` (n,) marks the positions merged over the window's frames."""

    base: int
    first: int
    last: int
    static: Tensor
    frames: Tensor = field(repr=False)
    clusters: int = 0
    dynamic: int = 0  # tokens kept per frame among the dynamic positions

    @property
    def n(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.last - self.first + 1

    @property
    def outputs(self) -> int:
        return self.clusters + self.width * self.dynamic


@dataclass(frozen=True)
class HoliTom(Method):
    """``budget``: fraction of the video's tokens kept (the reference's retain ratio; an int is tokens per
    video); ``tau``: static threshold on consecutive-frame cosine similarity; ``max_window``: longest
    segment in frames; ``k``: DPC-KNN neighbours; ``beta``: centre weight of a merged static token;
    ``noise``: scale of uniform density noise (0: deterministic), seeded by ``seed`` and the video's rank."""

    name: ClassVar[str] = "holitom"
    stage: ClassVar[Stage] = Stage.PRE_LLM
    budget_required: ClassVar[bool] = True

    budget: Budget | int | float = option(0.1, convert=as_budget)
    tau: float = 0.8
    max_window: int = option(1024, low=1)
    k: int = option(7, low=1)
    beta: float = option(0.6, low=0, high=1)
    noise: float = option(0.0, low=0, high=math.inf, high_open=True)
    seed: int = option(0, **SEED)

    def attention_requests(self, info: VisionInfo) -> dict[str, AttentionRequest]:
        return {ATTENTION: AttentionRequest(info.feature_layer, "received")}

    def retain_ratio(self, num_tokens: int) -> float:
        """The reference's rho for an item of ``num_tokens`` content tokens."""
        value = self.budget.value
        return float(value) if isinstance(value, float) else min(1.0, value / num_tokens)

    def reduce(self, item: VisualItem) -> Reduction:
        scores, _ = requested(item, ATTENTION, self.name)
        windows, removed = self.segment(item)
        total = item.num_tokens
        rho = min(self.retain_ratio(total) / ((total - removed) / total), 1.0)
        windows = _ensure_one_token([self._budgeted(w, rho) for w in windows])
        return self._assemble(item, [w for w in windows if w.outputs], scores)

    def segment(self, item: VisualItem) -> tuple[list[_Window], int]:
        """Every grid's windows (the DP per (t, h, w) grid) and the tokens temporal merging removes."""
        windows, removed = [], 0
        for segment in item.segments:
            t, h, w = segment.grid
            frames = item.features[segment.start:segment.stop].view(t, h * w, -1)
            above = consecutive_similarity(frames) > self.tau
            spans, reduced = best_segmentation(window_counts(above), self.max_window)
            removed += reduced
            for first, last in spans:
                static = above[first:last].all(0) if last > first else above.new_zeros(h * w)
                windows.append(_Window(segment.start, first, last, static, frames))
        return windows, removed

    def _budgeted(self, window: _Window, rho: float) -> _Window:
        n_static = int(window.static.sum())
        n_dynamic = window.n - n_static
        return dataclasses.replace(window, clusters=round(n_static * rho),
                                   dynamic=math.ceil(n_dynamic * rho) if n_dynamic else 0)

    def _assemble(self, item: VisualItem, windows: list[_Window], scores: Tensor) -> Reduction:
        device = item.features.device
        assignment = torch.full((item.num_tokens,), -1, dtype=torch.long, device=device)
        weights = torch.zeros(item.num_tokens, dtype=torch.float32, device=device)
        origins, features, offset = [], [], 0
        for window in windows:
            tokens, outputs, token_weights, origin, rows = self._window_outputs(item, window, scores, offset)
            assignment[tokens] = outputs
            weights[tokens] = token_weights
            origins.append(origin)
            features.append(rows)
            offset += window.outputs
        # each window's outputs fill its own origins' slots in ascending order: windows never interleave
        kept = torch.cat([o.sort().values for o in origins])
        return Reduction(kept=kept, features=torch.cat(features), assignment=assignment, weights=weights,
                         origin=torch.cat(origins))

    def _window_outputs(self, item: VisualItem, window: _Window, scores: Tensor,
                        offset: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(input tokens, their output tokens, their weights), each output token's origin and features, for
        one window whose outputs start at ``offset``: its static clusters first, then every frame's dynamic
        tokens."""
        device = item.features.device
        frame_start = window.base + (window.first + torch.arange(window.width, device=device)) * window.n
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        origins, features = [], []
        if window.clusters:
            positions = window.static.nonzero().squeeze(1)
            cluster, centres, weights, merged = self._clusters(item, window, positions)
            parts.append(((frame_start.unsqueeze(1) + positions).flatten(),
                          (offset + cluster).repeat(window.width), (weights / window.width).repeat(window.width)))
            origins.append(frame_start[0] + positions[centres])
            features.append(merged)
        if window.dynamic:
            positions = (~window.static).nonzero().squeeze(1)
            local = scores[frame_start.unsqueeze(1) + positions]  # (frames, n_dynamic)
            top = torch.sort(local, dim=1, descending=True, stable=True).indices[:, :window.dynamic]
            tokens = (frame_start.unsqueeze(1) + positions[top.sort(1).values]).flatten()
            first_out = offset + window.clusters
            parts.append((tokens, first_out + torch.arange(tokens.numel(), device=device),
                          torch.ones(tokens.numel(), device=device)))
            origins.append(tokens)
            features.append(item.features[tokens])
        tokens, outputs, weights = (torch.cat(column) for column in zip(*parts))
        return tokens, outputs, weights, torch.cat(origins), torch.cat(features)

    def _clusters(self, item: VisualItem, window: _Window,
                  positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(cluster of each static position, centre positions' ranks, weights of the static positions, the
        merged tokens (clusters, D) from the positions' temporal means)."""
        n_static, c = positions.numel(), window.clusters
        means = window.frames[window.first:window.last + 1, positions].float().mean(0)
        if c == n_static:  # every static token is its own centre: the merge is the temporal mean alone
            ranks = torch.arange(n_static, device=positions.device)
            return ranks, ranks, torch.ones(n_static, device=positions.device), means.to(item.features.dtype)
        distances = scaled_distances(means)
        noise = None
        if self.noise:  # one draw per (seed, video rank, window): the same video gets the same noise in a batch
            seed = (self.seed * 1_000_003 + item.index) * 1_000_003 + window.base + window.first
            noise = self.noise * torch.rand(n_static, generator=torch.Generator().manual_seed(seed))
        centres = dpc_knn_centres(distances, c, min(self.k, c), noise)
        cluster = nearest_centre(distances, centres)
        weights = centre_weights(cluster, centres, self.beta)
        return cluster, centres, weights, group_weighted_sum(means, cluster, weights, c).to(item.features.dtype)

    def own_flops(self, work: SampleWork) -> float:
        """The attention it asks for, and DPC-KNN's distance matmul in every segment that clusters (its
        per-position frame similarities are elementwise products, no matmul)."""
        return work.attention_capture(self) + sum(dpc_knn_flops(stats, item, work.decoder.hidden)
                                                  for stats, item in work.pairs())


def _ensure_one_token(windows: list[_Window]) -> list[_Window]:
    """Rounding can leave a video of all-static windows with no token: give its largest static group one."""
    if any(w.outputs for w in windows):
        return windows
    largest = max(range(len(windows)), key=lambda i: (int(windows[i].static.sum()), -i))
    windows[largest] = dataclasses.replace(windows[largest], clusters=1)
    return windows


def dpc_knn_flops(stats: ItemStats, item: VisualInput, width: int) -> float:
    """DPC-KNN's n x n x ``width`` distance matmul over the temporal means of each segment's n static
    tokens, where the segment clusters (fewer clusters than static tokens), read off the recorded
    provenance: a static merged token stands for its members in every frame of its segment."""
    if item.modality != "video" or not stats.provenance:
        return 0.0
    provenance = torch.tensor(stats.provenance)
    per_frame = provenance.numel() // item.frames
    tokens = (provenance >= 0).nonzero().squeeze(1)
    outputs, frames = provenance[tokens], tokens // per_frame
    n_out = int(outputs.max()) + 1 if outputs.numel() else 0
    first = torch.full((n_out,), item.frames).scatter_reduce(0, outputs, frames, "amin")
    last = torch.full((n_out,), -1).scatter_reduce(0, outputs, frames, "amax")
    size = torch.bincount(outputs, minlength=n_out)
    static = last > first
    total = 0.0
    for start in first[static].unique().tolist():
        in_segment = static & (first == start)
        segment_frames = int(last[in_segment][0]) - start + 1
        n_static, clusters = int(size[in_segment].sum()) // segment_frames, int(in_segment.sum())
        if clusters < n_static:
            total += linear(n_static, width, n_static)
    return total
