"""What a sweep runs: its shared setup and its (method, budget) configurations, in order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

UNREDUCED = "none"


class SweepError(RuntimeError):
    """The sweep cannot go on; the message names the config or setting at fault and the fix."""


@dataclass(frozen=True)
class SweepSetup:
    """What every run of one sweep shares. A sweep directory holds the results of one setup only."""

    model: str
    pretrained: str
    tasks: tuple[str, ...]
    limit: int | float | None
    model_args: str
    force_simple: bool

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks)}


@dataclass(frozen=True)
class Config:
    """One lmms-eval run: a method (``+`` composes stages) at one budget; ``none`` has no budget."""

    method: str
    budget: int | float | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        """Identity in results.jsonl; ``str`` keeps the int 1 (one token) apart from the fraction 1.0."""
        return self.method, None if self.budget is None else str(self.budget)

    @property
    def label(self) -> str:
        return f"{self.method} (unreduced)" if self.budget is None else f"{self.method} budget={self.budget}"

    @property
    def slug(self) -> str:
        """Directory name of the run."""
        return self.method if self.budget is None else f"{self.method}-{self.budget}"

    @property
    def model_args(self) -> str:
        return f"method={self.method}" if self.budget is None else f"method={self.method},budget={self.budget}"


def plan_configs(methods: list[str], budgets: list[int | float]) -> list[Config]:
    """The unreduced reference first (once, if asked for), then every method at every budget."""
    reduced = list(dict.fromkeys(m for m in methods if m != UNREDUCED))
    if reduced and not budgets:
        raise SweepError(f"--budgets is required for {', '.join(reduced)} (e.g. --budgets 192,128,64)")
    unique_budgets = list({str(budget): budget for budget in budgets}.values())  # 1 and 1.0 differ
    reference = [Config(UNREDUCED)] if UNREDUCED in methods else []
    return reference + [Config(method, budget) for method in reduced for budget in unique_budgets]
