"""Input helpers (video decoding and frame sampling)."""
