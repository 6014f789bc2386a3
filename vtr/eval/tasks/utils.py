"""Documents -> visuals, prompts and scores for vtr's offline tasks.

Color tasks: images and videos are synthesised from ``doc["color"]``: a solid background with a small
grey square (which moves across the frames of a video), so a real model can answer and a reduction
method has distinct tokens to choose from. ``vtr_synthetic``: the image of test sample ``doc["index"]``
of ``vtr.eval.synthetic``, redrawn from its seed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

WIDTH, HEIGHT, FRAMES, FPS = 64, 48, 8, 4
SQUARE = 12
QUESTION = "What is the main color of this {medium}? Answer with one word."


def _frame(color: str, step: int = 0) -> np.ndarray:
    frame = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[:] = ImageColor.getrgb(color)
    left = (4 + 6 * step) % (WIDTH - SQUARE)
    frame[4:4 + SQUARE, left:left + SQUARE] = 128
    return frame


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Image.fromarray(_frame(doc["color"]))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return QUESTION.format(medium="image")


def synthetic_doc_to_visual(doc: dict) -> list[Image.Image]:
    from vtr.eval import synthetic

    return [synthetic.sample("test", int(doc["index"])).image()]


def synthetic_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def video_doc_to_visual(doc: dict) -> list[str]:
    """lmms-eval's model classes treat a ``.mp4`` path as a video; write it once per color."""
    return [str(_video_file(doc["color"]))]


def video_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return QUESTION.format(medium="video")


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    words = results[0].strip().lower().split()
    answer = words[0].strip(".,!?:;\"'") if words else ""
    return {"exact_match": float(answer == doc["answer"])}


def _video_file(color: str) -> Path:
    """An mp4 of ``FRAMES`` frames in the temp dir, written atomically (parallel ranks may race)."""
    import av

    path = Path(tempfile.gettempdir()) / "vtr-task-videos" / f"{color}-{WIDTH}x{HEIGHT}x{FRAMES}.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    with av.open(partial, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for step in range(FRAMES):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_frame(color, step), format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path
