"""What a reduced token's position is: its original one, a compact re-index, or PPE's several.

``original``: every kept token keeps its original 1-D or M-RoPE position (gaps included); a merged
token takes the position of its slot (the kept index of its reduction, or its ``origin`` when the
reduction gives one: HoliTom's merged tokens in the reference order). ``compact``: kept tokens are
re-indexed consecutively. ``ppe`` (Positional Preservation Embedding, Huang et al., ICLR 2026): the
model still receives the ``original`` position ids (masks, decode steps and ``rope_deltas`` follow
them), but the rotary frequencies of every token are split into ``chunks`` bands and band k of a
merged token rotates with the original position of the k-th of its members, so one token carries up to
``chunks`` (t, h, w) positions. This module builds those per-chunk positions from any reduction's
provenance; ``vtr.llm.ppe`` turns them into rotary cos/sin for the decoder layers.

Members of a merged token, in the order chunks take them (``members``):

* ``"nearest"`` (the paper's rule, default): ascending distance to the cluster centre. Pre-LLM merges
  (visionzip's contextual tokens, pool, holitom, ...) measure it in the features the merge averaged:
  squared distance between a member's features and the merged token's. Merges inside the vision
  encoder (tome, dymu) leave no per-member features at the LLM's input, so there the proxy is the
  squared distance between a member's (t, h, w) / 1-D position and the mean position of its members.
  Ties go to the lower token index.
* ``"highest"`` (the released code's rule): descending original token index.

A token with m < chunks members cycles through them: chunk k takes member ``k mod m`` (as the released
code does), so the nearest members appear most often. A kept or unmerged token is its own single
member: all its chunks hold its own position, which reproduces standard RoPE / M-RoPE exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vtr.errors import ReductionError
from vtr.ops.grid import group_mean

POSITION_MODES = ("original", "compact", "ppe")
MEMBER_RULES = ("nearest", "highest")
DEFAULT_CHUNKS = 8


@dataclass(frozen=True)
class PositionScheme:
    """How reduced tokens are positioned: ``mode`` (one of ``POSITION_MODES``) and, for ``"ppe"``, the
    number of rotary chunks and the member rule."""

    mode: str = "original"
    chunks: int = DEFAULT_CHUNKS
    members: str = "nearest"

    def __post_init__(self) -> None:
        if self.mode not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {self.mode!r}")
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise ValueError(f"ppe_chunks must be a positive int (rotary bands per token), got {self.chunks!r}")
        if self.members not in MEMBER_RULES:
            raise ValueError(f"ppe_members must be one of {MEMBER_RULES}, got {self.members!r}")

    @classmethod
    def make(cls, positions: "str | PositionScheme", chunks: int | None = None,
             members: str | None = None) -> "PositionScheme":
        """The scheme of ``wrap(positions=..., ppe_chunks=..., ppe_members=...)``."""
        base = positions if isinstance(positions, PositionScheme) else cls(positions)
        if base.mode != "ppe" and (chunks is not None or members is not None):
            raise ValueError(f"ppe_chunks / ppe_members only apply with positions='ppe', got positions={base.mode!r}")
        return cls(base.mode, base.chunks if chunks is None else chunks, base.members if members is None else members)

    @property
    def ppe(self) -> bool:
        return self.mode == "ppe"


def chunk_members(assignment: Tensor, num_out: int, chunks: int, distance: Tensor | None) -> Tensor:
    """(num_out, chunks): the input token whose position each chunk of each output token takes.

    ``assignment`` (N,) is the output token each input token went into (-1 = dropped). ``distance``
    (N,) orders each output token's members nearest first (ties: lower index); ``None`` orders them by
    descending index. Chunk k takes member ``k mod m`` of the m members.
    """
    members = (assignment >= 0).nonzero().squeeze(1)
    if distance is None:
        ordered = members.flip(0)
    else:
        ordered = members[distance[members].argsort(stable=True)]
    ordered = ordered[assignment[ordered].argsort(stable=True)]  # grouped by output token, rule order inside
    counts = torch.bincount(assignment[members], minlength=num_out)
    if bool((counts == 0).any()):
        raise ReductionError("a reduction has an output token without any member token; PPE needs the provenance "
                             "of every output token (this is a bug of the reduction method)")
    starts = counts.cumsum(0) - counts
    cycle = torch.arange(chunks, device=assignment.device).unsqueeze(0) % counts.unsqueeze(1)
    return ordered[starts.unsqueeze(1) + cycle]


def feature_distance(features: Tensor, merged: Tensor, assignment: Tensor) -> Tensor:
    """(N,) squared distance of each token's features to its output token's (inf where dropped)."""
    own = merged[assignment.clamp_min(0)].float()
    return ((features.float() - own) ** 2).sum(-1).masked_fill(assignment < 0, float("inf"))


def position_distance(positions: Tensor, assignment: Tensor, num_out: int) -> Tensor:
    """(N,) squared distance of each token's position (rows, N) to the mean position of its output
    token's members (the proxy for merges whose member features are gone)."""
    points = positions.T.float()
    member = assignment >= 0
    centre = group_mean(points[member], assignment[member], num_out)
    return ((points - centre[assignment.clamp_min(0)]) ** 2).sum(-1).masked_fill(~member, float("inf"))


class ChunkPositions:
    """Per-chunk rotary positions of every input column of a batch: ``table`` (R, B, L, C).

    Starts with each column's own position in every chunk (R = the rows the rotary embedding reads: 1
    for 1-D RoPE, t/h/w for M-RoPE); ``add`` overwrites the columns of one item's output tokens.
    """

    def __init__(self, rope_positions: Tensor, scheme: PositionScheme) -> None:
        self.rope = rope_positions
        self.scheme = scheme
        self.table = rope_positions.unsqueeze(-1).expand(*rope_positions.shape, scheme.chunks).clone()

    def add(self, row: int, content_columns: Tensor, kept: Tensor, provenance: Tensor,
            centre_features: tuple[Tensor, Tensor] | None) -> None:
        """One item: ``content_columns`` (N,) its content tokens' columns in ``row``; ``kept`` / ``provenance``
        its reduction; ``centre_features`` (member features (N, D), output features (n_out, D)) for the
        ``nearest`` rule, ``None`` to use the position proxy."""
        columns = content_columns.to(self.table.device)
        positions = self.rope[:, row, columns]  # (R, N)
        provenance = provenance.to(columns.device)
        distance = None
        if self.scheme.members == "nearest":
            if centre_features is None:
                distance = position_distance(positions, provenance, kept.numel())
            else:
                features, merged = centre_features
                distance = feature_distance(features, merged, provenance.to(features.device)).to(columns.device)
        members = chunk_members(provenance, kept.numel(), self.scheme.chunks, distance)
        self.table[:, row, columns[kept.to(columns.device)]] = positions[:, members]

    def gathered(self, index: Tensor) -> Tensor:
        """(R, B, L', C) at the reduced columns ``index`` (B, L'); padding (-1) gets position 0."""
        rows, batch, _, chunks = self.table.shape
        src = index.clamp_min(0).view(1, *index.shape, 1).expand(rows, -1, -1, chunks)
        return self.table.gather(2, src).masked_fill((index < 0).view(1, *index.shape, 1), 0)
