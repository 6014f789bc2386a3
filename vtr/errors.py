"""Errors vtr raises on purpose. Each message names the problem and how to fix it."""


class UnsupportedModelError(TypeError):
    """The model's architecture has no vtr adapter."""


class ReductionError(RuntimeError):
    """The inputs cannot be reduced as asked (placeholder/feature mismatch, NaN features, ...)."""


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded by any available backend."""
