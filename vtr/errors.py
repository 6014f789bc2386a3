"""Errors vtr raises on purpose. Each message names the problem and how to fix it."""


class UnsupportedModelError(TypeError):
    """The model's architecture has no vtr adapter."""


class ReductionError(RuntimeError):
    """The inputs cannot be reduced as asked (placeholder/feature mismatch, NaN features, ...)."""


class UnreachableBudgetError(ReductionError):
    """The method cannot meet the budget on this input's geometry (e.g. PDrop's stages at their layers cannot
    average that few tokens); the same method at its own default, or with other options, can still run."""


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded by any available backend."""
