"""``vtr.show``: run methods x budgets on one image or video and picture what each kept; or picture a call
already made (``show_call``).

Each configuration runs under ``vtr.reduced`` (an already wrapped model gets its own configuration back
afterwards), generating greedily; the unreduced input is the row of method ``none``. A configuration a
method refuses is a cell saying why, as is an item whose family has no pixel map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vtr.errors import ReductionError
from vtr.pixels import PixelMap
from vtr.show.figure import Cell, grid_figure, matplotlib_figure_class, title
from vtr.show.maps import pixel_maps
from vtr.show.paint import paint, side_by_side
from vtr.stats import CallStats, SampleStats

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
DEFAULT_QUESTION = "what is in the image ?"


@dataclass(frozen=True)
class Column:
    """One column of a grid: processor ``inputs`` (one sample), their pixel maps, and the budget its cells
    run at (``None``: each method's own default)."""

    label: str
    inputs: Any
    maps: list[PixelMap]
    budget: int | float | None
    caption: str = "unreduced"  # the title of its unreduced cell


def show(model: torch.nn.Module, processor: Any, image_or_video: Any, methods: Sequence[str] = ("divprune",),
         budgets: Sequence[int | float] = (0.25,), question: str = DEFAULT_QUESTION, *, frames: int | None = None,
         max_new_tokens: int = 8) -> Any:
    """A figure of what each method kept of ``image_or_video`` at each budget, and what the model answered.

    ``image_or_video``: a PIL image, an (H, W, 3) uint8 array, a video as (T, H, W, 3) uint8 frames, or the
    path of an image or video file (``frames``: frames sampled from a video file, evenly). Rows: the
    unreduced input, then each of ``methods``; columns: ``budgets`` (a method without a budget, e.g. dymu,
    runs once at its defaults).
    """
    matplotlib_figure_class()  # a missing matplotlib fails before any model runs
    if not budgets:
        raise ValueError("pass at least one budget (an int: tokens kept per image/video, or a fraction in (0, 1])")
    inputs = visual_inputs(model, processor, image_or_video, question, frames)
    maps = pixel_maps(model, inputs)[0]
    columns = [Column(f"budget {budget}", inputs, maps, budget) for budget in budgets]
    return grid(model, processor, [(method, method, {}) for method in methods], columns,
                heading=f"{model.config.model_type}: “{question}”", max_new_tokens=max_new_tokens)


def grid(model: torch.nn.Module, processor: Any, methods: Sequence[tuple[str, str, dict[str, Any]]],
         columns: Sequence[Column], heading: str = "", max_new_tokens: int = 8) -> Any:
    """Rows: the unreduced input (once per distinct input), then each (row label, method, options); columns:
    ``columns``. A method without a budget runs once per distinct input, at ``options``."""
    from vtr.methods import available_methods, takes_budget

    matplotlib_figure_class()
    unknown = sorted({method for _, method, _ in methods} - set(available_methods()))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(available_methods())}")
    first = [all(column.inputs is not earlier.inputs for earlier in columns[:i]) for i, column in enumerate(columns)]
    rows = [("none", [_run_cell(model, processor, column, "none", {}, column.caption, max_new_tokens) if new else None
                      for column, new in zip(columns, first)])]
    for label, method, options in methods:
        budgeted = takes_budget(method)
        rows.append((label, [
            _run_cell(model, processor, column, method, {"budget": column.budget, **options} if budgeted else options,
                      column.label if budgeted else ("" if options else "defaults"), max_new_tokens)
            if budgeted or new else None
            for column, new in zip(columns, first)]))
    return grid_figure(rows, heading=heading)


def show_call(model: torch.nn.Module, processor: Any, inputs: dict[str, Any], stats: CallStats | None = None,
              answers: Sequence[str] | None = None) -> Any:
    """A figure of a call already made: ``inputs`` as passed to the wrapped model, ``stats`` its record
    (default: ``vtr.stats(model)``), ``answers`` the decoded outputs per sample (optional). One row, one
    cell per batch row."""
    import vtr

    matplotlib_figure_class()
    stats = vtr.stats(model) if stats is None else stats
    if stats is None:
        raise ValueError("the model made no reduced call yet: call generate() or forward() first, or pass stats")
    maps = pixel_maps(model, inputs)
    if len(maps) != len(stats.samples):
        raise ValueError(f"stats has {len(stats.samples)} samples but the inputs {len(maps)} rows; pass the inputs "
                         f"of the call the stats came from")
    cells = [picture(processor, row_maps, sample, f"sample {i}", None if answers is None else answers[i])
             for i, (row_maps, sample) in enumerate(zip(maps, stats.samples))]
    return grid_figure([(stats.method, cells)], heading=f"{model.config.model_type}")


def visual_inputs(model: torch.nn.Module, processor: Any, image_or_video: Any, question: str,
                  frames: int | None) -> dict[str, Any]:
    """Processor inputs (one chat turn: the picture, then ``question``) on the model's device."""
    from PIL import Image

    from vtr.testing import prompt

    if isinstance(image_or_video, (str, os.PathLike)):
        path = Path(image_or_video)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            from vtr.io.video import load_video

            image_or_video = load_video(path, num_frames=frames).frames
        else:
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {str(path)!r}")
            image_or_video = Image.open(path).convert("RGB")
    is_video = isinstance(image_or_video, (np.ndarray, torch.Tensor)) and image_or_video.ndim == 4
    if isinstance(image_or_video, np.ndarray) and not is_video:
        image_or_video = Image.fromarray(image_or_video)
    if not is_video and not isinstance(image_or_video, Image.Image):
        raise ValueError(f"expected a PIL image, an (H, W, 3) or (T, H, W, 3) uint8 array or a file path, got "
                         f"{type(image_or_video).__name__}")
    text = [prompt(processor, question, images=0 if is_video else 1, videos=1 if is_video else 0)]
    visual = {"videos": [image_or_video]} if is_video else {"images": [image_or_video]}
    return processor(text=text, return_tensors="pt", **visual).to(model.device)


def _run_cell(model: torch.nn.Module, processor: Any, column: Column, method: str, options: dict[str, Any],
              label: str, max_new_tokens: int) -> Cell:
    import vtr

    try:
        with vtr.reduced(model, method, **options), torch.no_grad():
            out = model.generate(**column.inputs, max_new_tokens=max_new_tokens, do_sample=False)
            sample = vtr.stats(model).samples[0]
    except (ValueError, ReductionError) as error:
        return Cell(label, note=f"not run: {error}")
    answer = processor.tokenizer.decode(out[0, column.inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return picture(processor, column.maps, sample, label, answer)


def picture(processor: Any, maps: list[PixelMap], sample: SampleStats, label: str, answer: str | None) -> Cell:
    """One cell: every visual item of ``sample`` painted side by side, titled with its token counts."""
    last = sample.visual_per_layer[-1] if sample.visual_per_layer else None
    heading = title(label, sample.visual_before, sample.visual_after, last, answer)
    missing = [m.missing for m in maps if m.missing]
    if missing:
        return Cell(heading, note=missing[0])
    if len(maps) != len(sample.items):
        return Cell(heading, note=f"the call reduced {len(sample.items)} visual inputs, the inputs hold {len(maps)}")
    panels = []
    for pixel_map, item in zip(maps, sample.items):
        mean, std = normalisation(processor, item.modality)
        panels += paint(pixel_map, item, mean, std, item.last_layer)
    return Cell(heading, image=side_by_side(panels))


def normalisation(processor: Any, modality: str) -> tuple[Any, Any]:
    """(mean, std) the processor normalised ``modality`` pixels with (``None``s: not normalised)."""
    part = getattr(processor, f"{modality}_processor", None) or getattr(processor, "image_processor", None)
    if part is None or not getattr(part, "do_normalize", True):
        return None, None
    mean, std = getattr(part, "image_mean", None), getattr(part, "image_std", None)
    if mean is None or std is None:
        raise ValueError(f"{type(part).__name__} normalises pixels but names no image_mean/image_std; vtr show "
                         f"cannot undo its normalisation")
    return tuple(np.broadcast_to(mean, 3)), tuple(np.broadcast_to(std, 3))
