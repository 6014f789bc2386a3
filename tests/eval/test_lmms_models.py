"""vtr's lmms-eval model classes in process: registration, reduced generation and loglikelihood, errors."""

from __future__ import annotations

import sys

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from lmms_eval.models.model_utils.gen_metrics import (
    reset_logged_metrics,
    summarize_logged_metrics,
)
from loguru import logger as eval_logger
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vtr import testing
from vtr.eval.lmms import CLASS_PATHS
from vtr.eval.models.base import EvaluationAborted, Reduced
from vtr.eval.models.llava_hf import VtrLlavaHf, VtrLlavaHfChat
from vtr.eval.models.loading import Loading
from vtr.eval.records import GenerateRecorder, last_call_flops
from vtr.eval.tasks.utils import video_doc_to_visual
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
    simple_path, chat_path = CLASS_PATHS[model_id]
    simple, chat = get_model(model_id, force_simple=True), get_model(model_id)
    assert issubclass(simple, Reduced) and simple.is_simple == (simple_path is not None)  # else: the chat class
    assert issubclass(chat, Reduced) and chat.is_simple == (chat_path is None)


def test_internvl_chat_generation_runs_reduced_per_image_over_its_tiles(checkpoint):
    """lmms-eval's internvl_hf class tiles a 64x32 image into 2 crops and a thumbnail (48 tokens)."""
    model = loaded(get_model("vtr_internvl_hf"), checkpoint("internvl"), method="divprune", budget=6)
    image = testing.random_image(64, 32)

    def doc_to_messages(doc):
        content = [{"type": "image", "url": image}, {"type": "text", "text": doc["question"]}]
        return [{"role": "user", "content": content}]

    [result] = model.generate_until([request(("", doc_to_messages, {"max_new_tokens": 3}, 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert (record["visual_before"], record["visual_after"]) == (48, 6) and 1 <= record["new_tokens"] <= 3


def test_internvl_chat_generation_reduces_a_video_file_over_its_frames(checkpoint):
    """The class hands the clip's path to transformers' processor (torchcodec-only in transformers 5): vtr decodes
    it with decord or PyAV. Each of the 8 frames is one 16-token tile in image placeholders of its own, reduced
    as an image to the budget."""
    model = loaded(get_model("vtr_internvl_hf"), checkpoint("internvl"), method="divprune", budget=6,
                   num_frames=8)
    [path] = video_doc_to_visual({"color": "red"})

    def doc_to_messages(doc):
        content = [{"type": "video", "url": path}, {"type": "text", "text": doc["question"]}]
        return [{"role": "user", "content": content}]

    [result] = model.generate_until([request(("", doc_to_messages, {"max_new_tokens": 3}, 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert (record["visual_before"], record["visual_after"]) == (8 * 16, 8 * 6) and 1 <= record["new_tokens"] <= 3


def test_gemma3_generation_runs_reduced_per_image(checkpoint):
    """lmms-eval's gemma3 class (bfloat16 inputs) reduces the 16 pooled tokens of an image to the budget; vtr's
    loglikelihood (lmms-eval's gemma3 has none) runs reduced too."""
    model = get_model("vtr_gemma3")(pretrained=checkpoint("gemma3"), device="cpu", device_map="cpu",
                                    dtype="bfloat16", method="divprune", budget=6)
    model.task_dict = {"t": {"test": [{"question": QUESTION}]}}
    [result] = model.generate_until([request((QUESTION, {"max_new_tokens": 3}, lambda doc: [IMAGE], 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert (record["visual_before"], record["visual_after"]) == (16, 6) and 1 <= record["new_tokens"] <= 3
    [scored] = model.loglikelihood([request((QUESTION, " red", lambda doc: [IMAGE], 0, "t", "test"))])  # vtr's own
    assert scored.token_counts.vtr["visual_kept"] == 6 and isinstance(scored.text[0], float)


def test_gemma4_generation_runs_reduced_per_image(checkpoint):
    """lmms-eval's gemma4 class (bfloat16, its default of 280 soft tokens per image) reduces each image's pooled
    tokens to the budget; vtr's loglikelihood runs reduced too."""
    model = get_model("vtr_gemma4")(pretrained=checkpoint("gemma4"), method="divprune", budget=6)  # a user's defaults
    model.task_dict = {"t": {"test": [{"question": QUESTION}]}}
    [result] = model.generate_until([request((QUESTION, {"max_new_tokens": 3}, lambda doc: [IMAGE], 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert record["visual_before"] > 70 and record["visual_after"] == 6 and 1 <= record["new_tokens"] <= 3
    [scored] = model.loglikelihood([request((QUESTION, " red", lambda doc: [IMAGE], 0, "t", "test"))])
    assert scored.token_counts.vtr["visual_kept"] == 6 and isinstance(scored.text[0], float)


def test_ppe_options_reach_the_wrapped_model(checkpoint):
    model = loaded(VtrLlavaHf, checkpoint("llava"), method="pool", budget=4, positions="ppe", ppe_chunks="4")
    assert model.model._vtr_state.positions == PositionScheme("ppe", 4, "nearest")


def test_chat_generation_runs_reduced_and_carries_its_record_into_the_results_json(checkpoint):
    model = loaded(VtrLlavaHfChat, checkpoint("llava"), method="divprune", budget=4)

    def doc_to_messages(doc):
        content = [{"type": "image", "url": IMAGE}, {"type": "text", "text": doc["question"]}]
        return [{"role": "user", "content": content}]

    [result] = model.generate_until([request(("", doc_to_messages, {"max_new_tokens": 3}, 0, "t", "test"))])
    record = result.token_counts.to_dict()["vtr"]
    assert (record["visual_before"], record["visual_after"], record["visual_kept"]) == (64, 4, 4)
    assert record["prompt_before"] - record["prompt_after"] == 60 and 1 <= record["new_tokens"] <= 3
    # what lmms-eval puts into the results JSON without --log_samples: the means, under throughput
    reset_logged_metrics()
    model.clean()
    summary = summarize_logged_metrics()
    assert summary["avg_vtr_samples"] == 1 and summary["avg_vtr_content_tokens_kept"] == 4
    assert summary["avg_vtr_visual_tokens_before"] == 64 and summary["avg_vtr_newline_tokens_kept"] == 0


FAMILIES = {"vtr_llava_hf": ("llava", "bfloat16"), "vtr_qwen2_vl": ("qwen2_vl", "float32"),
            "vtr_qwen2_5_vl": ("qwen2_5_vl", "float32"), "vtr_qwen3_vl": ("qwen3_vl", "float32"),
            "vtr_qwen3_5": ("qwen3_5", "float32"),
            "vtr_internvl_hf": ("internvl", "float32"), "vtr_gemma3": ("gemma3", "bfloat16"),
            "vtr_gemma4": ("gemma4", "float32")}


@pytest.mark.parametrize("model_id", sorted(FAMILIES))
def test_every_family_takes_the_loading_keys_and_defaults_to_a_working_device(model_id, checkpoint):
    """The dtype each family would not load by default (llava: the checkpoint's float32; the lmms-eval
    Qwen classes: bfloat16), eager attention (qwen2_vl's lmms-eval class has no such argument), and no
    device argument: the only GPU, else the CPU, said in the log."""
    family, dtype = FAMILIES[model_id]
    messages = []
    sink = eval_logger.add(messages.append, format="{message}")
    try:
        model = get_model(model_id, force_simple=True)(pretrained=checkpoint(family), dtype=dtype,
                                                       attn_implementation="eager", method="pool", budget=4)
    finally:
        eval_logger.remove(sink)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert model.model.dtype == getattr(torch, dtype) and model.model.config._attn_implementation == "eager"
    assert str(model.model.device) == expected and str(model.device) == expected
    reason = "the only GPU" if torch.cuda.device_count() == 1 else "no GPU found" if expected == "cpu" else "GPU 0"
    assert any(f"vtr model: rank 0/1 on {expected} ({reason}" in message for message in messages)


def _where(loading: Loading) -> tuple[str, str]:
    return loading.device, loading.device_map


def test_loading_keys_resolve_to_one_device_and_map():
    assert _where(Loading.resolve({"device_map": "cpu"}, 0, 1)) == ("cpu", "cpu")
    assert _where(Loading.resolve({"device": "cpu"}, 0, 1)) == ("cpu", "cpu")
    spread = Loading.resolve({"device_map": "auto"}, 0, 1)
    assert (spread.device_map, spread.device) == ("auto", "cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert _where(Loading.resolve({}, 1, 2)) == ("cpu", "cpu")
    with pytest.raises(ValueError, match="attn_implementation='fast' is not one of eager, sdpa"):
        Loading.resolve({"attn_implementation": "fast"}, 0, 1)


def test_onevision_video_runs_through_the_default_chat_class(checkpoint):
    """lmms-eval's chat class hands the processor images=[] and the video's path; vtr's decodes it."""
    model = get_model("vtr_llava_hf")(pretrained=checkpoint("llava_onevision"), method="divprune", budget=4,
                                      max_frames_num=4)
    model.task_dict = DOCS
    [video] = video_doc_to_visual({"color": "red"})

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "video", "url": video}, {"type": "text", "text": QUESTION}]}]

    [result] = model.generate_until([request(("", doc_to_messages, {"max_new_tokens": 2}, 0, "t", "test"))])
    record = result.token_counts.vtr
    assert record["visual_before"] > 8 and record["visual_newlines_before"] == record["visual_newlines_after"] == 1
    assert record["visual_after"] - record["visual_newlines_after"] == 4  # the budget counts content tokens


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


def test_method_and_argument_errors_come_before_the_checkpoint_loads_and_abort_the_run():
    def fails(match: str, **arguments) -> None:
        with pytest.raises(EvaluationAborted, match=match) as caught:
            VtrLlavaHf(pretrained="/nonexistent", **arguments)
        assert not isinstance(caught.value, Exception)  # lmms-eval's `except Exception` must not swallow it

    fails(r"loading VtrLlavaHf failed: ValueError: method 'divprune' has no option\(s\) \['layer'\]",
          method="divprune", budget=4, layer=2)
    fails("batch_size=2: vtr models answer one request at a time", method="divprune", budget=4, batch_size=2)
    fails("ppe_members must be one of", method="pool", budget=4, positions="ppe", ppe_members="centre")
    # a Qwen-only key on a LLaVA model is named as such, not taken for a method option
    fails("VtrLlavaHf takes no max_pixels: it is neither a key of the lmms-eval class", method="divprune",
          budget=4, max_pixels=4096)
    fails("dtype='float64' is not one of auto, float32, bfloat16, float16", dtype="float64")


def test_a_qwen_class_refuses_data_parallel_without_a_gpu_per_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = ("lmms-eval's Qwen2_5_VL runs data parallel on GPUs only" if not torch.cuda.is_available()
                else "2 data-parallel processes need 2 GPUs" if torch.cuda.device_count() < 2 else None)
    if expected is None:
        pytest.skip("two GPUs: rank 1 goes to cuda:1")
    with pytest.raises(EvaluationAborted, match=expected):
        get_model("vtr_qwen2_5_vl", force_simple=True)(pretrained="/nonexistent", method="none")


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
        self._records = []


def test_a_generate_error_fails_the_request_even_when_the_model_class_swallows_it():
    class Failing(torch.nn.Module):
        def generate(self, **kwargs):
            raise RuntimeError("reduction failed")

    with pytest.raises(EvaluationAborted, match="_Stub on t doc 0 failed: RuntimeError: reduction failed"):
        _Stub(Failing()).generate_until([request(())])


def test_flops_are_none_without_the_flops_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "vtr.measure.flops", None)
    assert last_call_flops(torch.nn.Linear(1, 1), {}, new_tokens=0, logits="last") is None
