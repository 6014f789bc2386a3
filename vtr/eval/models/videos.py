"""Video paths that an lmms-eval class hands to a transformers processor, decoded with decord, then PyAV.

transformers 5's video processors decode a path with torchcodec only: torchvision's ``read_video``, their
fallback, is gone from torchvision 0.26 on. A class that puts ``{"type": "video", "video": path}`` into
``apply_chat_template`` (lmms-eval's gemma4) then fails on every video without torchcodec. transformers'
own ``load_video`` still reads with decord and PyAV, with the processor's frame sampling and metadata
(Gemma 4 writes each frame's timestamp into the prompt), so only the choice of decoder changes here.
"""

from __future__ import annotations

from typing import Any, Callable

from vtr.errors import VideoDecodeError

DECODERS = ("decord", "pyav")


def decode_with_local_backends(video_processor: Any) -> None:
    """Make ``video_processor.fetch_videos`` read paths with decord, falling back to PyAV."""

    def fetch_videos(videos: Any, sample_indices_fn: Callable | None = None):
        if isinstance(videos, list):  # the processor's own contract: (frames, metadata) per video, transposed
            return list(zip(*[fetch_videos(video, sample_indices_fn) for video in videos]))
        return load_with_fallback(videos, sample_indices_fn)

    video_processor.fetch_videos = fetch_videos


def load_with_fallback(video: Any, sample_indices_fn: Callable | None):
    """transformers' ``load_video`` with the first decoder that reads ``video``; one error naming each
    decoder's failure when none does."""
    from transformers.video_utils import load_video

    failures = []
    for backend in DECODERS:
        try:
            return load_video(video, backend=backend, sample_indices_fn=sample_indices_fn)
        except Exception as error:  # noqa: BLE001 - every decoder's failure is reported below
            failures.append(f"{backend}: {type(error).__name__}: {error}")
    raise VideoDecodeError(f"could not decode video {video!r} ({'; '.join(failures)}); install decord or PyAV "
                           f"(pip install decord av), or re-encode the file (ffmpeg -i in -c:v libx264 out.mp4)")
