"""How many visual tokens a method keeps for one visual input (an image, or a whole video)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """`int` = tokens kept per visual input; `float` in (0, 1] = fraction of that input's tokens.

    A fraction rounds to the nearest count (the DivPrune reference uses ``round(ratio * N)``) and never
    goes below one token, so a tiny image cannot silently vanish from the prompt. An int larger than
    the input's token count keeps everything.
    """

    value: int | float

    def __post_init__(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"budget must be an int (tokens kept per image/video) or a float in (0, 1] (fraction kept), "
                f"got {value!r} of type {type(value).__name__}"
            )
        if isinstance(value, float):
            if math.isnan(value) or not 0.0 < value <= 1.0:
                raise ValueError(
                    f"a fractional budget must lie in (0, 1], got {value}; pass e.g. 0.25 to keep a quarter "
                    f"of the visual tokens, or an int such as 64 to keep 64 tokens per image"
                )
        elif value <= 0:
            raise ValueError(
                f"budget must be positive, got {value}; pass the number of visual tokens to keep per "
                f"image/video (e.g. 64) or a fraction in (0, 1]"
            )

    def tokens_for(self, n_tokens: int) -> int:
        """Number of tokens to keep out of ``n_tokens``."""
        if isinstance(self.value, float):
            return min(n_tokens, max(1, round(self.value * n_tokens)))
        return min(n_tokens, self.value)

    def __str__(self) -> str:
        return str(self.value)  # "1.0" (fraction) and "1" (one token) must not look alike


def as_budget(value: Budget | int | float) -> Budget:
    return value if isinstance(value, Budget) else Budget(value)
