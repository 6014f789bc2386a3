"""vtr's lmms-eval model classes in process: registration, reduced generation and loglikelihood, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vtr import testing
from vtr.eval.lmms import CLASS_PATHS
from vtr.eval.models.base import Reduced
from vtr.eval.models.llava_hf import VtrLlavaHf, VtrLlavaHfChat
from vtr.eval.records import GenerateRecorder, last_call_flops
from vtr.positions import PositionScheme

QUESTION = "what is in the image ?"
IMAGE = testing.random_image()
DOCS = {"t": {"test": [{"question": QUESTION}]}}


def request(arguments: tuple) -> Instance:
    return Instance("generate_until", arguments, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})


def loaded(cls, checkpoint: str, **method) -> Reduced:
    model = cls(pretrained=checkpoint, device="cpu", device_map="cpu", dtype="float32", **method)
    model.task_dict = DOCS
    return model


@pytest.mark.parametrize("model_id", sorted(CLASS_PATHS))
def test_every_model_id_resolves_through_the_entry_point(model_id):
    simple, chat = get_model(model_id, force_simple=True), get_model(model_id)
    assert issubclass(simple, Reduced) and simple.is_simple
    assert issubclass(chat, Reduced) and chat.is_simple == (CLASS_PATHS[model_id][1] is None)


def test_ppe_options_reach_the_wrapped_model(checkpoint):
    model = loaded(VtrLlavaHf, checkpoint("llava"), method="pool", budget=4, positions="ppe", ppe_chunks="4")
    assert model.model._vtr_state.positions == PositionScheme("ppe", 4, "nearest")


def test_chat_generation_runs_reduced_and_carries_its_record(checkpoint):
    model = loaded(VtrLlavaHfChat, checkpoint("llava"), method="divprune", budget=4)

    def doc_to_messages(doc):
        content = [{"type": "image", "url": IMAGE}, {"type": "text", "text": doc["question"]}]
        return [{"role": "user", "content": content}]

    [result] = model.generate_until([request(("", doc_to_messages, {"max_new_tokens": 3}, 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert (record["visual_before"], record["visual_after"], record["visual_kept"]) == (64, 4, 4)
    assert record["prompt_before"] - record["prompt_after"] == 60 and 1 <= record["new_tokens"] <= 3


def test_loglikelihood_is_the_mean_nll_of_the_continuation_and_runs_reduced(checkpoint):
    def score(**method) -> list:
        model = loaded(VtrLlavaHf, checkpoint("llava"), **method)
        return model.loglikelihood([request((QUESTION, continuation, lambda doc: [IMAGE], 0, "t", "test"))
                                    for continuation in (" red", " blue")])

    reference = LlavaForConditionalGeneration.from_pretrained(checkpoint("llava"))
    processor = AutoProcessor.from_pretrained(checkpoint("llava"))
    prompt = testing.prompt(processor, QUESTION)
    context_len = processor(text=[prompt], images=[IMAGE], return_tensors="pt")["input_ids"].shape[1]
    for result, continuation in zip(score(method="none"), (" red", " blue")):
        inputs = processor(text=[prompt + continuation], images=[IMAGE], return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :context_len] = -100
        with torch.no_grad():
            expected = reference(**inputs, labels=labels).loss
        nll, greedy = result.text
        assert nll == pytest.approx(float(expected), rel=1e-5) and isinstance(greedy, bool)
    reduced = score(method="divprune", budget=4)
    assert [result.token_counts.vtr["visual_kept"] for result in reduced] == [4, 4]
    assert all(isinstance(result.text[0], float) for result in reduced)


def test_method_errors_come_before_the_checkpoint_loads():
    with pytest.raises(ValueError, match=r"method 'divprune' has no option\(s\) \['layer'\]"):
        VtrLlavaHf(pretrained="/nonexistent", method="divprune", budget=4, layer=2)
    with pytest.raises(ValueError, match="batch_size=2: vtr models answer one request at a time"):
        VtrLlavaHf(pretrained="/nonexistent", method="divprune", budget=4, batch_size=2)
    with pytest.raises(ValueError, match="ppe_members must be one of"):
        VtrLlavaHf(pretrained="/nonexistent", method="pool", budget=4, positions="ppe", ppe_members="centre")


class _SwallowingModelClass:
    """Like lmms-eval's llava_hf chat class: an exception in generate() becomes an empty answer."""

    def generate_until(self, requests):
        try:
            self.model.generate(input_ids=torch.ones(1, 2, dtype=torch.long))
        except RuntimeError:
            pass
        return [""]


class _Stub(Reduced, _SwallowingModelClass):
    def __init__(self, model: torch.nn.Module) -> None:  # no checkpoint: only the request path is under test
        self.model = model
        self._generations = GenerateRecorder(model)


def test_a_generate_error_fails_the_request_even_when_the_model_class_swallows_it():
    class Failing(torch.nn.Module):
        def generate(self, **kwargs):
            raise RuntimeError("reduction failed")

    with pytest.raises(RuntimeError, match="reduction failed"):
        _Stub(Failing()).generate_until([request(())])


def test_flops_are_none_without_the_flops_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "vtr.measure.flops", None)
    assert last_call_flops(torch.nn.Linear(1, 1), {}, new_tokens=0, logits="last") is None
