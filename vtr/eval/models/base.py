"""``Reduced``: turns one of lmms-eval's own model classes into a vtr model class.

It is a mixin placed before the lmms-eval class (``class VtrLlavaHf(Reduced, LlavaHf)``): lmms-eval
loads the checkpoint exactly as it always does, then ``vtr.wrap`` installs the reduction on that
model, so ``generate_until`` (lmms-eval's code) and ``loglikelihood`` (below) both run reduced.

``--model_args pretrained=...,method=divprune,budget=64,positions=original,layer=2`` (PPE:
``positions=ppe,ppe_chunks=8,ppe_members=nearest``): arguments the
lmms-eval class takes go to it, every other one is a method option. ``method`` may compose stages
with ``+`` (``divprune+fastv``); ``none`` (the default) keeps every token and still records counts.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output

import vtr
from vtr.eval.records import GenerateRecorder, ReducedTokenCounts, call_record
from vtr.methods import Method, make_methods
from vtr.positions import PositionScheme


class Reduced:
    """Mixin for an lmms-eval model class; see the module docstring."""

    def __init__(self, method: str | None = None, budget: int | float | None = None,
                 positions: str = "original", ppe_chunks: int | str | None = None, ppe_members: str | None = None,
                 **kwargs: Any) -> None:
        accepted = _named_parameters(super().__init__)
        options = {key: value for key, value in kwargs.items() if key not in accepted}
        methods = configure(method, budget, options)  # before the checkpoint loads: fail in seconds
        scheme = PositionScheme.make(positions, None if ppe_chunks is None else int(ppe_chunks), ppe_members)
        if str(kwargs.get("batch_size", 1)) != "1":
            raise ValueError(
                f"batch_size={kwargs['batch_size']}: vtr models answer one request at a time so that every "
                f"logged sample carries its own visual-token and FLOPs counts; drop --batch_size or set it to 1"
            )
        super().__init__(**{key: value for key, value in kwargs.items() if key in accepted})
        vtr.wrap(self.model, methods, positions=scheme)
        self._generations = GenerateRecorder(self.model)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """lmms-eval's own generation, handed one request at a time.

        The lmms-eval classes reorder requests internally, so this is what ties each generate() call,
        and the visual tokens and FLOPs recorded for it, to its request.
        """
        run = super().generate_until
        return [self._generate_one(run, request) for request in requests]

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Mean negative log-likelihood of each continuation and whether it is the greedy one.

        Mean NLL (lower is better) is what lmms-eval's multiple-choice scoring takes the argmin of. The
        pair travels as ``GenerationResult.text`` because lmms-eval 0.7.3 turns a bare ``(float, bool)``
        into its string; this also carries the request's record, as for generations. lmms-eval's own
        llava_hf version cannot run on transformers 5 (it tokenizes the context without its image) and
        its Qwen classes have none, hence one implementation here for all families.
        """
        return [self._loglikelihood_one(request) for request in requests]

    def _generate_one(self, run: Callable[[list[Instance]], list], request: Instance) -> GenerationResult:
        self._generations.reset()
        [output] = run([request])
        self._generations.raise_error()
        text, counts = unwrap_generation_output(output)
        if self._generations.inputs is None:  # the lmms-eval class answered without calling generate()
            return GenerationResult(text=text, token_counts=counts)
        record = call_record(self.model, self._generations.inputs, self._generations.new_tokens, logits="last")
        return GenerationResult(text=text, token_counts=ReducedTokenCounts(
            input_tokens=record["prompt_after"], output_tokens=record["new_tokens"], vtr=record))

    def _loglikelihood_one(self, request: Instance) -> GenerationResult:
        if len(request.args) != 6:
            raise ValueError(
                f"vtr models score loglikelihood requests that carry a document (context, continuation, "
                f"doc_to_visual, doc_id, task, split); got {len(request.args)} arguments (acc_mutual_info's "
                f"unconditional requests are not supported)"
            )
        context, continuation, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        if not isinstance(continuation, str):
            continuation = continuation(doc)
        inputs, context_len = self._likelihood_inputs(context, continuation, list(doc_to_visual(doc)))
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        target = inputs["input_ids"][0, context_len:]
        if target.numel() == 0:
            raise ValueError(f"continuation {continuation!r} adds no token to the context of doc {doc_id} of {task}")
        # reduction removes visual tokens from the context only: the continuation is the tail either way
        log_probs = logits[0, -target.numel() - 1:-1].float().log_softmax(-1)
        nll = -log_probs.gather(-1, target[:, None]).mean()
        greedy = bool((log_probs.argmax(-1) == target).all())
        record = call_record(self.model, inputs, new_tokens=0, logits="all")
        return GenerationResult(text=(float(nll), greedy), token_counts=ReducedTokenCounts(
            input_tokens=record["prompt_after"], output_tokens=0, vtr=record))

    def _likelihood_inputs(self, context: str, continuation: str, visuals: list) -> tuple[dict, int]:
        """Processor inputs for chat-formatted ``context`` + ``continuation``, and the context's length."""
        if any(isinstance(visual, str) for visual in visuals):
            raise ValueError(
                "vtr models score loglikelihood requests on images only; this task gives a video path. "
                "Evaluate video with a generate_until task"
            )
        processor = self._processor
        content = [{"type": "image"} for _ in visuals] + [{"type": "text", "text": context}]
        system = getattr(self, "system_prompt", None)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = visuals or None
        context_len = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
        inputs = processor(text=[prompt + continuation], images=images, return_tensors="pt")
        return inputs.to(self.model.device, self.model.dtype), context_len

    @property
    def _processor(self):
        """lmms-eval's llava_hf keeps its processor as ``_image_processor``, the Qwen classes as ``processor``."""
        return getattr(self, "processor", None) or self._image_processor


def _named_parameters(function: Callable) -> set[str]:
    return {name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}


def configure(method: str | None, budget: int | float | None, options: dict[str, Any]) -> list[Method]:
    """The methods a model runs: ``method`` names (``+`` composes stages; ``None`` = ``none``), the
    budget, and method options as lmms-eval parsed them from ``--model_args``. ``ValueError`` names what
    is wrong (unknown method or option, invalid budget)."""
    names = (method or "none").split("+")
    options = {key: _option_value(value) for key, value in options.items()}
    return make_methods(names if len(names) > 1 else names[0], budget, **options)


def _option_value(value: Any) -> Any:
    """``layers=[8,16,24]`` arrives from ``--model_args`` as a string: make it a tuple."""
    if isinstance(value, str) and value.startswith("["):
        return tuple(json.loads(value))
    return value
