"""The visual-input description every adapter gives: token grids and structural tokens of one item.

An item (an image, or a whole video) reaches the LLM as a run of placeholder tokens. Most are
*content* tokens laid out on one or more grids: LLaVA-1.5 has one square grid; LLaVA-NeXT has the base
image's grid followed by the unpadded grid of all AnyRes crops; a video has a (frames, h, w) grid.
Some are *structural*: LLaVA-NeXT/OneVision append an ``image_newline`` token after each row of the
crops grid (and one after a whole OneVision video). Methods only ever see content tokens plus their
segments, so pooling, neighbourhoods and temporal segmentation work on every family without
model-specific code. The engine keeps a newline token exactly when at least one content token of the
row it closes is kept: the LLM still sees where the surviving rows end, and never a newline for a row
that vanished.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """Content tokens ``start .. start + t*h*w`` (content index space) on a raster (t, h, w) grid.

    ``crops``: for an AnyRes crops grid, the (top, bottom, left, right) box of each crop on the grid (in
    crop order, tiling it); empty for any other grid. The base image that precedes such a segment covers
    the same image extent (both show the whole image), which is what lets the base image's attention
    speak for each crop (``allocation="thumbnail"``).
    """

    start: int
    grid: tuple[int, int, int]
    crops: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def size(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class ItemLayout:
    """Where the content and structural tokens of one item sit among its placeholder slots.

    ``content``: slot of each content token, in the order methods see them (ascending, except InternVL's
    thumbnail-first order; the engine puts every kept token back into its own slot). ``structural``: slot
    of each structural token. ``closes``: for each structural token, the ``[start, stop)`` range of content indices (the row) it
    closes. ``segments`` tile the content index space.
    """

    content: Tensor
    segments: tuple[Segment, ...]
    structural: Tensor
    closes: Tensor  # (n_structural, 2)
    # content is every slot in slot order (no structural tokens): the engine then skips its slot gathers
    plain: bool = False

    @classmethod
    def grid_only(cls, grid: tuple[int, int, int], device: torch.device) -> "ItemLayout":
        n = grid[0] * grid[1] * grid[2]
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return cls(torch.arange(n, device=device), (Segment(0, grid),), empty, empty.view(0, 2), plain=True)

    def structural_kept(self, content_kept: Tensor) -> Tensor:
        """Which structural tokens stay, given a boolean mask over content tokens (vectorised)."""
        if self.structural.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=content_kept.device)
        counts = torch.nn.functional.pad(content_kept.long().cumsum(0), (1, 0))
        return counts[self.closes[:, 1]] > counts[self.closes[:, 0]]

    def check(self, n_tokens: int) -> None:
        """Raise ``ValueError`` unless the layout covers ``n_tokens`` slots exactly once."""
        tiled = sum(s.size for s in self.segments) == self.content.numel() and all(
            a.stop == b.start for a, b in zip(self.segments, self.segments[1:])
        )
        if self.plain:  # content is arange(its size) by construction (grid_only): no tensor to compare
            covered = self.content.numel() == n_tokens
        else:
            slots = torch.cat([self.content, self.structural]).sort().values
            covered = slots.numel() == n_tokens and torch.equal(slots, torch.arange(n_tokens, device=slots.device))
        if not covered or not tiled:
            raise ValueError(f"layout {self.segments} with {self.structural.numel()} structural tokens does not "
                             f"tile {n_tokens} tokens")


def square_grid(n_tokens: int, frames: int = 1) -> tuple[int, int, int]:
    """(t, s, s) when each of ``frames`` frames holds a square grid, else (t, 1, n/t): one row per frame."""
    per_frame = n_tokens // frames
    side = math.isqrt(per_frame)
    return (frames, side, side) if side * side == per_frame else (frames, 1, per_frame)


def layout_with_newlines(is_newline: Tensor, frames: int = 1) -> ItemLayout:
    """Layout of a LLaVA-NeXT-style packed item from the positions of its ``image_newline`` tokens.

    Handled shapes (as transformers packs them): no newline (a plain grid, e.g. LLaVA-NeXT-Video
    video); one trailing newline (base image only, or a OneVision video: it closes everything); base
    grid + an H x (W + 1) crops grid whose rows each end with a newline (AnyRes images).
    """
    slots = tuple(is_newline.nonzero().flatten().tolist())  # one host read; the rest is cached per geometry
    return _newline_layout(is_newline.numel(), slots, frames, is_newline.device)


@functools.lru_cache(maxsize=64)
def _newline_layout(n: int, slots: tuple[int, ...], frames: int, device: torch.device) -> ItemLayout:
    """``layout_with_newlines`` of ``n`` tokens with newlines at ``slots``: built once per image geometry (a
    stream of same-sized images or videos reuses it), since building it costs ~25 ops and 4 host reads."""
    newline_slots = torch.tensor(slots, dtype=torch.long, device=device)
    is_newline = torch.zeros(n, dtype=torch.bool, device=device)
    is_newline[newline_slots] = True
    content = (~is_newline).nonzero().flatten()
    n_content = content.numel()
    if newline_slots.numel() == 0:
        return ItemLayout.grid_only(square_grid(n, frames), device)
    if newline_slots.numel() == 1 and int(newline_slots[0]) == n - 1:  # closes everything before it
        closes = torch.tensor([[0, n_content]], device=device)
        return ItemLayout(content, (Segment(0, square_grid(n_content, frames)),), newline_slots, closes)
    first = int(newline_slots[0])
    width = int(newline_slots[1] - newline_slots[0]) - 1 if newline_slots.numel() > 1 else first
    rows = newline_slots.numel()
    base_len = first - width
    row_ends = base_len + (torch.arange(rows, device=device) + 1) * (width + 1) - 1
    if base_len < 0 or width < 1 or not torch.equal(newline_slots, row_ends) or int(row_ends[-1]) != n - 1:
        raise ValueError(f"unrecognised newline pattern at slots {newline_slots.tolist()} of {n} tokens")
    segments = ((Segment(0, square_grid(base_len)),) if base_len else ()) + (Segment(base_len, (1, rows, width)),)
    row_starts = base_len + torch.arange(rows, device=device) * width
    closes = torch.stack([row_starts, row_starts + width], dim=1)
    return ItemLayout(content, segments, newline_slots, closes)
