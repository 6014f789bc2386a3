"""Read frames from a video file: uniform or fixed-fps sampling, decord with a PyAV fallback.

decord is fast (random access) but ships only for some platforms and fails on some containers; PyAV
(FFmpeg) reads almost anything. ``backend="auto"`` tries decord, then PyAV, and raises one
``VideoDecodeError`` naming the file and what each backend said when neither can read it.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from vtr.errors import VideoDecodeError

BACKENDS = ("auto", "decord", "pyav")


@dataclass(frozen=True)
class Video:
    """Decoded frames (T, H, W, 3) uint8 RGB, their timestamps in seconds, and the source frame rate."""

    frames: np.ndarray
    timestamps: np.ndarray
    source_fps: float
    path: str


def frame_indices(total_frames: int, source_fps: float, num_frames: int | None = None,
                  fps: float | None = None) -> np.ndarray:
    """Indices of the frames to decode.

    ``num_frames`` alone: evenly spaced over the whole video, first and last frame included (the
    LLaVA-OneVision / lmms-eval convention). ``fps`` alone: one frame every ``source_fps / fps`` frames.
    Both: the fps sampling, thinned evenly to at most ``num_frames``. Neither: every frame.
    """
    check_sampling(num_frames, fps)
    if total_frames < 1:
        return np.zeros(0, dtype=np.int64)
    if fps is not None:
        step = max(source_fps / fps, 1.0) if source_fps > 0 else 1.0
        indices = np.unique(np.minimum(np.round(np.arange(0, total_frames, step)), total_frames - 1).astype(np.int64))
    else:
        indices = np.arange(total_frames, dtype=np.int64)
    if num_frames is not None and len(indices) > num_frames:
        indices = indices[np.round(np.linspace(0, len(indices) - 1, num_frames)).astype(np.int64)]
    return indices


def check_sampling(num_frames: int | None, fps: float | None) -> None:
    """``ValueError`` naming the argument when ``num_frames`` or ``fps`` cannot sample any frame."""
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral)
                                   or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int (frames to sample), got {num_frames!r}; pass e.g. "
                         f"num_frames=32, or None for every frame")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps)
                            or fps <= 0):
        raise ValueError(f"fps must be a positive, finite number (frames sampled per second), got {fps!r}; pass "
                         f"e.g. fps=1, or None to sample by num_frames alone")


def load_video(path: str | os.PathLike, num_frames: int | None = None, fps: float | None = None,
               backend: str = "auto") -> Video:
    """Decode the sampled frames of ``path`` (see ``frame_indices`` for the sampling rules).

    Arguments are checked before anything is read: a bad ``num_frames``, ``fps``, ``backend`` or ``path``
    type is a ``ValueError`` naming it; a path that does not exist or is a directory, and a file no backend
    can decode, are ``VideoDecodeError``s naming the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a video file's path (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    check_sampling(num_frames, fps)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if os.path.isdir(path):
        raise VideoDecodeError(f"{path!r} is a directory, not a video file; pass the path of a video file (to load "
                               f"every video of a folder, call load_video once per file)")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path!r}; check the path")
    readers = {"decord": _read_decord, "pyav": _read_pyav}
    chosen = ("decord", "pyav") if backend == "auto" else (backend,)
    failures = []
    for name in chosen:
        try:
            return readers[name](path, num_frames, fps)
        except Exception as error:  # noqa: BLE001 - every backend failure is reported below
            failures.append(f"{name}: {type(error).__name__}: {error}")
    raise VideoDecodeError(
        f"could not decode video {path!r} ({'; '.join(failures)}); the file may be corrupt or truncated, "
        f"or its codec unsupported: re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or install "
        f"the missing backend (pip install decord av)"
    )


def _read_decord(path: str, num_frames: int | None, fps: float | None) -> Video:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    source_fps = float(reader.get_avg_fps())
    indices = frame_indices(len(reader), source_fps, num_frames, fps)
    if len(indices) == 0:
        raise VideoDecodeError("no frames")
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return Video(frames, indices / source_fps if source_fps > 0 else indices.astype(float), source_fps, path)


def _read_pyav(path: str, num_frames: int | None, fps: float | None) -> Video:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or 0.0)
        # stream.frames is 0 for containers that do not store a count: decode everything then
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    indices = frame_indices(len(frames), source_fps, num_frames, fps)
    if len(indices) == 0:
        raise VideoDecodeError("no frames")
    picked = np.stack([frames[i] for i in indices])
    return Video(picked, indices / source_fps if source_fps > 0 else indices.astype(float), source_fps, path)
