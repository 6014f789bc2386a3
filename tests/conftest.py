"""Shared fixtures: tiny offline models and processed inputs for every exactness test."""

from __future__ import annotations

import contextlib
import os

# also read by the lmms-eval subprocesses the sweep tests start
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# pytest-xdist workers share the cores: each gets its share of torch threads (by default every worker takes
# them all, and on tiny models the oversubscribed, spinning OpenMP threads make the suite several times slower)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // _WORKERS)))  # also for subprocesses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import vtr
from vtr import testing

# every supported family, and those that take video
MODELS = ["llava", "llava_next", "llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
          "internvl"]
VIDEO_MODELS = ["llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
# InternVL takes a video as frames in image placeholders, each frame an image item: the image path, so only
# the exactness tests also run on its videos
FRAME_VIDEO_CASES = [("internvl", "video")]
# llava: one CLIP crop; AnyRes families: 40x32 gives base + 2 crops; qwen: native resolution (64x48 -> 8x6)
# internvl: 64x32 gives 1x2 crops of 32 pixels + a thumbnail (3 tiles of 16 tokens)
IMAGE_SIZE = {"llava": (32, 32), "llava_next": (40, 32), "llava_onevision": (40, 32), "llava_next_video": (40, 32),
              "internvl": (64, 32)}
# processors that take a batch's images nested per prompt (one list per prompt)
NESTED_IMAGES = {"gemma3", "gemma4"}
GREEDY = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True)


def greedy_without_placeholders(model, **generate_kwargs) -> dict:
    """``generate_kwargs`` (default: GREEDY) that never emit a visual placeholder token: random weights
    might, and an uncached recompute would then count one placeholder too many, wrapped or not."""
    placeholders = [getattr(model.config, f"{m}_token_id", None) for m in ("image", "video")]
    return dict(generate_kwargs or GREEDY, suppress_tokens=[t for t in placeholders if t is not None])


def image_for(name: str, seed: int = 0):
    width, height = IMAGE_SIZE.get(name, (64, 48))
    return testing.random_image(width, height, seed=seed)


def make_inputs(processor, name: str, kind: str = "image", texts=None, seeds=(0,)):
    """Processor outputs for one prompt per seed; ``kind`` is "image", "video", "two_images" or "text"."""
    texts = texts or ["what is in the image ?"] * len(seeds)
    if kind in ("image", "two_images"):
        offsets = (0,) if kind == "image" else (0, 100)
        prompts = [testing.prompt(processor, t, images=len(offsets)) for t in texts]
        images = [[image_for(name, s + k) for k in offsets] for s in seeds]
        images = images if name in NESTED_IMAGES else [image for row in images for image in row]
        return processor(images=images, text=prompts, return_tensors="pt", padding=True)
    if kind == "video":
        prompts = [testing.prompt(processor, t, images=0, videos=1) for t in texts]
        size = (64, 48) if name.startswith("qwen") else (32, 32)
        videos = [testing.random_video(4, *size, seed=s) for s in seeds]
        return processor(videos=videos, text=prompts, return_tensors="pt", padding=True)
    if kind == "text":
        return processor(text=[testing.prompt(processor, t, images=0) for t in texts], return_tensors="pt",
                         padding=True)
    raise ValueError(kind)


# two prompts of different lengths: the shorter row is left-padded
TWO_ROWS = dict(texts=["what ?", "describe this picture please , what is in it ?"], seeds=(0, 1))


def padded_inputs(processor, name):
    """Image inputs of two rows (TWO_ROWS), the first left-padded."""
    inputs = make_inputs(processor, name, **TWO_ROWS)
    assert (inputs["attention_mask"] == 0).any(), "the test needs left padding"
    return inputs


def row_alone(inputs, i: int) -> dict:
    """Row ``i`` of a processor batch, alone and without its padding (pixels split per image)."""
    keep = inputs["attention_mask"][i].bool()
    out = {k: v[i:i + 1][:, keep] for k, v in inputs.items() if k in ("input_ids", "attention_mask",
                                                                      "mm_token_type_ids", "token_type_ids")}
    if "num_frames_per_video" in inputs:  # Gemma 4: one video per row, the batch's frames concatenated
        frames = inputs["num_frames_per_video"].tolist()
        start = sum(frames[:i])
        out["pixel_values_videos"] = inputs["pixel_values_videos"][start:start + frames[i]]
        out["video_position_ids"] = inputs["video_position_ids"][start:start + frames[i]]
        out["num_frames_per_video"] = inputs["num_frames_per_video"][i:i + 1]
    elif "image_grid_thw" in inputs:
        sizes = inputs["image_grid_thw"].prod(-1).tolist()
        out["pixel_values"] = inputs["pixel_values"].split(sizes)[i]
        out["image_grid_thw"] = inputs["image_grid_thw"][i:i + 1]
    elif inputs["pixel_values"].dim() == 4 and "image_sizes" not in inputs and inputs["pixel_values"].shape[0] > len(
            inputs["input_ids"]):  # InternVL: every row's tiles, in row order; a row's share of the placeholders
        placeholders = (inputs["input_ids"] == testing.internvl_tokenizer().context_image_token_id).sum(1)
        tiles = (placeholders * inputs["pixel_values"].shape[0] // placeholders.sum()).tolist()
        out["pixel_values"] = inputs["pixel_values"].split(tiles)[i]
    else:
        out["pixel_values"] = inputs["pixel_values"][i:i + 1]
        for key in ("image_sizes", "image_position_ids"):  # Gemma 4: each image's patch positions
            if key in inputs:
                out[key] = inputs[key][i:i + 1]
    return out


def check_keep_all_and_unwrap(model, inputs, generate_kwargs: dict) -> None:
    """Keep-all (divprune at budget 1.0) gives the unwrapped model's tokens, every step's scores and forward
    logits bit for bit; after a real reduction, ``unwrap`` gives them back too."""
    expected = model.generate(**inputs, **generate_kwargs)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    with vtr.reduced(model, "divprune", budget=1.0):
        got = model.generate(**inputs, **generate_kwargs)
        with torch.no_grad():
            got_logits = model(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    assert torch.equal(got_logits[real], expected_logits[real])
    with vtr.reduced(model, "divprune", budget=4):  # a real reduction, then unwrapped
        model.generate(**inputs, **generate_kwargs)
    again = model.generate(**inputs, **generate_kwargs)
    assert torch.equal(again.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.scores, expected.scores))


def check_cached_equals_uncached(model, inputs, generate_kwargs: dict) -> None:
    """On the model as it is (wrapped): cached generate gives the uncached recompute's tokens and scores."""
    cached = model.generate(**inputs, **generate_kwargs)
    uncached = model.generate(**inputs, **generate_kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for x, y in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def check_batch_equals_rows_alone(model, inputs, generate_kwargs: dict) -> None:
    """On the model as it is (wrapped): every row of the left-padded batch generates what it does alone."""
    batch = model.generate(**inputs, **generate_kwargs)
    new = batch.sequences[:, inputs["input_ids"].shape[1]:]
    for i in range(new.shape[0]):
        alone_inputs = row_alone(inputs, i)
        alone = model.generate(**alone_inputs, **generate_kwargs)
        own = alone.sequences[0, alone_inputs["input_ids"].shape[1]:]  # shorter where it stopped at eos
        assert torch.equal(own, new[i, :own.numel()])
        assert (new[i, own.numel():] == model.generation_config.pad_token_id).all()  # the batch padded it after
        for step_batch, step_alone in zip(batch.scores, alone.scores):
            torch.testing.assert_close(step_batch[i], step_alone[0], rtol=1e-5, atol=1e-5)


def eager_vision_attention(model, pixels, layer: int) -> torch.Tensor:
    """(sequences, L, L) head-averaged eager attention of every vision-tower sequence at ``layer``."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model.model.vision_tower(pixels, output_attentions=True).attentions[layer].mean(1)
    finally:
        model.set_attn_implementation("sdpa")


@contextlib.contextmanager
def flop_counter(model, **options):
    """FlopCounterMode over an inference call of ``model``, its weights frozen while it counts. Under no_grad a
    view of a weight that requires grad keeps ``requires_grad`` with no ``grad_fn``, and the counter's module
    tracker fails on such a tensor passed into a module ("Expected gradient function to be set"): transformers
    5.25 runs Qwen3.5's causal convolution through a ``kernels`` module with ``conv1d.weight.squeeze(1)``."""
    flags = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, **options) as counter:
            yield counter
    finally:
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)


def counted_flops(model, run) -> int:
    """Total FLOPs FlopCounterMode counts over ``run()``, an inference call of ``model``."""
    with flop_counter(model) as counter:
        run()
    return counter.get_total_flops()


@pytest.fixture
def tiny():
    """Factory: ``tiny(name)`` -> fresh (model, processor) with seeded random weights."""

    def build(name: str):
        return testing.build(name)

    return build


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(name)`` -> directory holding a tiny model and its processor, saved once per session
    with ``save_pretrained`` (what a user's local checkpoint looks like)."""
    saved = {}

    def get(name: str) -> str:
        if name not in saved:
            model, processor = testing.build(name)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            processor.save_pretrained(directory)
            saved[name] = str(directory)
        return saved[name]

    return get


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
