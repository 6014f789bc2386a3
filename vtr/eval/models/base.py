"""``Reduced``: turns one of lmms-eval's own model classes into a vtr model class.

It is a mixin placed before the lmms-eval class (``class VtrLlavaHf(Reduced, LlavaHf)``): lmms-eval's
class loads the checkpoint (with vtr's loading keys applied, ``loading.py``), then ``vtr.wrap``
installs the reduction on that model, so ``generate_until`` (lmms-eval's code) and ``loglikelihood``
(below) both run reduced.

``--model_args pretrained=...,method=divprune,budget=64,positions=original,layer=2`` (PPE:
``positions=ppe,ppe_chunks=8,ppe_members=nearest``): ``device``, ``device_map``, ``dtype`` and
``attn_implementation`` are vtr's loading keys (every family), other keys the lmms-eval class takes
go to it (``max_pixels``...), the rest are method options; a key that is none of these fails.
``method`` may compose stages with ``+`` (``divprune+fastv``); ``none`` (the default) keeps every
token and still records counts. Any error fails the whole run (``EvaluationAborted``), and the
records' means reach lmms-eval's results JSON (``clean``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from typing import Any, Callable, Iterator

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as eval_logger

import vtr
from vtr.eval import costs
from vtr.eval.models.loading import LOADING_KEYS, Loading
from vtr.eval.pictures import FirstSamplePicture
from vtr.eval.records import GenerateRecorder, ReducedTokenCounts, call_record
from vtr.methods import Method, make_methods
from vtr.positions import PositionScheme


class EvaluationAborted(BaseException):
    """A vtr model class failed: loading, a method's configuration, or one request.

    A ``BaseException`` (like ``SystemExit``) on purpose: lmms-eval 0.7.3 catches every ``Exception`` of
    a run, logs it and exits 0, so a plain error would leave a direct ``python -m lmms_eval`` run
    "successful" with missing or wrong scores. This one ends the process with exit code 1 and a
    traceback whose last line names the model class, the document and the cause.
    """


@contextlib.contextmanager
def aborting(what: str) -> Iterator[None]:
    """Turn any error inside the block into ``EvaluationAborted`` naming ``what`` failed."""
    try:
        yield
    except Exception as error:
        raise EvaluationAborted(f"vtr: {what} failed: {type(error).__name__}: {error}") from error


class Reduced:
    """Mixin for an lmms-eval model class; see the module docstring."""

    # lmms-eval's Qwen classes move rank i of a data-parallel run to cuda:i and accept only MULTI_GPU/FSDP
    gpu_only_data_parallel = False

    def __init__(self, method: str | None = None, budget: int | float | None = None,
                 positions: str = "original", ppe_chunks: int | str | None = None, ppe_members: str | None = None,
                 **kwargs: Any) -> None:
        with aborting(f"loading {type(self).__name__}"):
            self._load_reduced(method, budget, positions, ppe_chunks, ppe_members, kwargs)

    def _load_reduced(self, method: str | None, budget: int | float | None, positions: str,
                      ppe_chunks: int | str | None, ppe_members: str | None, kwargs: dict[str, Any]) -> None:
        """Check everything that needs no checkpoint first (fail in seconds), then load and wrap."""
        accepted = _accepted_keys(type(self))
        rank, world_size = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        loading = Loading.resolve({key: kwargs.pop(key) for key in LOADING_KEYS if key in kwargs}, rank, world_size)
        if world_size > 1 and self.gpu_only_data_parallel and not loading.device.startswith("cuda"):
            raise ValueError(
                f"lmms-eval's {_lmms_eval_class(self).__name__} runs data parallel on GPUs only (rank i on cuda:i); "
                f"there is no GPU per process here ({loading.device}): run one process (--num-processes 1)"
            )
        options = method_options(kwargs, accepted, type(self).__name__)
        methods = configure(method, budget, options)
        scheme = PositionScheme.make(positions, None if ppe_chunks is None else int(ppe_chunks), ppe_members)
        if str(kwargs.get("batch_size", 1)) != "1":
            raise ValueError(
                f"batch_size={kwargs['batch_size']}: vtr models answer one request at a time so that every "
                f"logged sample carries its own visual-token and FLOPs counts; drop --batch_size or set it to 1"
            )
        passed = {key: value for key, value in kwargs.items() if key in accepted}
        passed.update({key: getattr(loading, key) for key in ("device", "device_map") if key in accepted})
        with loading.applied():
            super().__init__(**passed)
        eval_logger.info(f"vtr model: rank {os.environ.get('RANK', '0')}/{world_size} on {loading.describe()}")
        vtr.wrap(self.model, methods, positions=scheme)
        self._generations = GenerateRecorder(self.model)
        self._records: list[tuple[tuple[str, Any], dict[str, Any]]] = []
        self._picture = FirstSamplePicture()

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """lmms-eval's own generation, handed one request at a time.

        The lmms-eval classes reorder requests internally, so this is what ties each generate() call,
        and the visual tokens and FLOPs recorded for it, to its request.
        """
        run = super().generate_until
        return [self._answer(request, lambda one: self._generate_one(run, one)) for request in requests]

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Mean negative log-likelihood of each continuation and whether it is the greedy one.

        Mean NLL (lower is better) is what lmms-eval's multiple-choice scoring takes the argmin of. The
        pair travels as ``GenerationResult.text`` because lmms-eval 0.7.3 turns a bare ``(float, bool)``
        into its string; this also carries the request's record, as for generations. lmms-eval's own
        llava_hf version cannot run on transformers 5 (it tokenizes the context without its image) and
        its Qwen classes have none, hence one implementation here for all families.
        """
        return [self._answer(request, self._loglikelihood_one) for request in requests]

    def clean(self) -> None:
        """Put the means of this run's records into lmms-eval's results JSON, then free the model.

        lmms-eval calls ``clean`` on every rank once all requests have run. The records of all ranks are
        gathered, and rank 0 logs their means per sample (``vtr.eval.costs``) through lmms-eval's
        ``log_metrics``, which lands them in the results JSON under ``throughput`` as ``avg_vtr_*``
        (e.g. ``avg_vtr_content_tokens_kept``): a run without ``--log_samples`` still reports them.
        """
        records = _gathered(self._records)
        if int(os.environ.get("RANK", "0")) == 0 and records:
            by_sample: dict[tuple[str, Any], list[dict[str, Any]]] = {}
            for sample, record in records:
                by_sample.setdefault(sample, []).append(record)
            summary = costs.summarize(by_sample.values())
            log_metrics(total_elapsed_time=0.0, total_gen_tokens=0, avg_speed=0.0,
                        additional_metrics=costs.flat(summary))
        super().clean()

    def _answer(self, request: Instance, answer: Callable[[Instance], GenerationResult]) -> GenerationResult:
        """``answer(request)``, failing the run on any error, and its record kept for ``clean``."""
        with aborting(f"{type(self).__name__} on {request.task_name} doc {request.doc_id}"):
            result = answer(request)
        record = getattr(result.token_counts, "vtr", None)
        if record is not None and not request.metadata.get("__padding_only__"):  # lmms-eval's rank padding
            self._records.append(((request.task_name, request.doc_id), record))
        return result

    def _generate_one(self, run: Callable[[list[Instance]], list], request: Instance) -> GenerationResult:
        self._generations.reset()
        [output] = run([request])
        self._generations.raise_error()
        text, counts = unwrap_generation_output(output)
        if self._generations.inputs is None:  # the lmms-eval class answered without calling generate()
            return GenerationResult(text=text, token_counts=counts)
        record = call_record(self.model, self._generations.inputs, self._generations.new_tokens, logits="last")
        self._picture.draw(self.model, self._processor, self._generations.inputs, text)
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
        self._picture.draw(self.model, self._processor, inputs, None)
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


def _gathered(local: list) -> list:
    """``local`` of every rank, in rank order (``local`` itself outside a multi-process run)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return [item for part in everyone for item in part]


def _lmms_eval_class(model: Reduced) -> type:
    return next(cls for cls in type(model).__mro__[1:] if not issubclass(cls, Reduced))


def method_option_names() -> set[str]:
    """Every option some vtr method takes (``--model_args`` keys that go to the method)."""
    from vtr.methods import REGISTRY

    return {field.name for method in REGISTRY.values() for field in dataclasses.fields(method) if field.init}


def method_options(kwargs: dict[str, Any], accepted: set[str], model_class: str) -> dict[str, Any]:
    """The ``--model_args`` keys that are method options; ``ValueError`` for a key that is neither the
    lmms-eval class's nor any method's (e.g. ``max_pixels`` on a LLaVA model)."""
    options = {key: value for key, value in kwargs.items() if key not in accepted}
    stray = sorted(set(options) - method_option_names())
    if stray:
        raise ValueError(
            f"{model_class} takes no {', '.join(stray)}: it is neither a key of the lmms-eval class (which takes "
            f"{', '.join(sorted(accepted | set(LOADING_KEYS)))}) nor an option of a vtr method"
        )
    return options


def _accepted_keys(cls: type) -> set[str]:
    """The keyword arguments the lmms-eval classes behind ``Reduced`` in ``cls``'s MRO take: a class whose
    ``__init__`` forwards ``**kwargs`` (lmms-eval's qwen3_5 over qwen3_vl) also takes its parent's."""
    accepted: set[str] = set()
    for base in cls.__mro__[cls.__mro__.index(Reduced) + 1:]:
        if "__init__" not in base.__dict__:
            continue
        parameters = inspect.signature(base.__dict__["__init__"]).parameters.values()
        accepted |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return accepted


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
