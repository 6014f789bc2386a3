"""What vtr did on one lmms-eval request, carried into lmms-eval's own sample log.

lmms-eval writes ``token_counts[i].to_dict()`` of every request into each logged sample (the
``--log_samples`` JSONL). ``ReducedTokenCounts`` extends that per-request record with a ``"vtr"``
entry, so visual tokens kept and FLOPs sit next to the answer and the score of the same sample, with
no side file to keep in sync, and survive lmms-eval's multi-process gathering unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from lmms_eval.api.instance import TokenCounts

import vtr


@dataclass
class ReducedTokenCounts(TokenCounts):
    """lmms-eval's token counts of one request plus vtr's record of it (``call_record``).

    ``input_tokens`` is the prompt the LLM received (after a pre-LLM reduction), so lmms-eval's own
    efficiency summary reflects the reduction too.
    """

    vtr: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "vtr": self.vtr}


def call_record(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], new_tokens: int,
                logits: str) -> dict[str, Any]:
    """Visual tokens and FLOPs of the last call of a wrapped ``model`` (one batch row).

    ``visual_kept`` is what the last decoder layer saw: the budget for pre-LLM methods and for
    in-LLM ones (which let every token into the LLM and prune at layer K) alike, plus the newlines
    that ``visual_newlines_after`` counts.
    """
    stats = vtr.stats(model)
    sample = stats.samples[0]
    flops = last_call_flops(model, inputs, new_tokens, logits)
    return {
        "method": stats.method,
        "positions": stats.positions,
        "visual_before": sample.visual_before,
        "visual_after": sample.visual_after,
        "visual_kept": sample.visual_per_layer[-1] if sample.visual_per_layer else sample.visual_after,
        "visual_per_layer": list(sample.visual_per_layer),
        # AnyRes / OneVision newlines: counted in the totals above, never by a budget, never pruned in the LLM
        "visual_newlines_before": sum(item.structural_before for item in sample.items),
        "visual_newlines_after": sum(item.structural_after for item in sample.items),
        "prompt_before": sample.prompt_before,
        "prompt_after": sample.prompt_after,
        "new_tokens": new_tokens,
        "flops": None if flops is None else float(flops.total),
        "flops_breakdown": None if flops is None else flops.as_dict(),
    }


def last_call_flops(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], new_tokens: int, logits: str):
    """``vtr.measure.flops.call_flops`` for the one batch row of the last call, or ``None`` without that module.

    The FLOPs model is optional here so that evaluation works on installs (and branches) that lack it;
    any other error inside it propagates, since a wrong FLOPs figure is worse than none.
    """
    try:
        from vtr.measure.flops import call_flops
    except ModuleNotFoundError as error:
        if error.name not in ("vtr.measure", "vtr.measure.flops"):
            raise
        return None
    return call_flops(model, dict(inputs), new_tokens=new_tokens, logits=logits)[0]


class GenerateRecorder:
    """Sits on ``model.generate`` (over vtr's wrapper) and keeps what the last call got and produced.

    lmms-eval's model classes call ``self.model.generate(**inputs, ...)`` deep inside their own loops,
    and some turn any exception into an empty answer. The recorder keeps the tensor inputs (for FLOPs),
    the number of new tokens and the exception, so that a failed reduction fails the run instead of
    being scored as a wrong answer.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs: dict[str, torch.Tensor] | None = None
        self.new_tokens = 0
        self.error: BaseException | None = None
        model.generate = self._recording(model.generate)

    def reset(self) -> None:
        self.inputs, self.new_tokens, self.error = None, 0, None

    def raise_error(self) -> None:
        """Re-raise what the last generate() raised, even if the caller swallowed it."""
        if self.error is not None:
            raise self.error

    def _recording(self, generate: Callable) -> Callable:
        @functools.wraps(generate)
        def recording(*args: Any, **kwargs: Any):
            inputs = {key: value for key, value in kwargs.items() if isinstance(value, torch.Tensor)}
            if args:
                inputs["input_ids"] = args[0]
            try:
                output = generate(*args, **kwargs)
            except Exception as error:
                self.error = error
                raise
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            self.inputs, self.new_tokens = inputs, sequences.shape[1] - inputs["input_ids"].shape[1]
            return output

        return recording
