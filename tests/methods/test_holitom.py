"""HoliTom's outer stage: segmentation, reallocation, merge formula, output order, and end to end on video."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vtr
from conftest import greedy_without_placeholders
from vtr import testing
from vtr.engine import reduce_inputs
from vtr.layout import Segment
from vtr.methods import HoliTom, HoliTomInner, VisualItem, make_method
from vtr.ops.dpc_knn import dpc_knn_centres, nearest_centre, scaled_distances
from vtr.ops.segmentation import best_segmentation, consecutive_similarity, window_counts

D = 16


def _video(frames: torch.Tensor) -> VisualItem:
    """A video item from (T, h, w, D) features, with random attention scores."""
    t, h, w, d = frames.shape
    n = t * h * w
    attention = torch.rand(n, generator=torch.Generator().manual_seed(7))
    return VisualItem(frames.reshape(n, d), (Segment(0, (t, h, w)),), "video", 0,
                      {"holitom": (attention, torch.zeros(n, 2))})


def _noise_frames(t: int, h: int = 4, w: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, h, w, D, generator=torch.Generator().manual_seed(seed))


def _partly_static_frames(seed: int = 0) -> torch.Tensor:
    """8 frames of 4x4: positions 0..9 nearly constant over frames 0..4, positions 0..5 over frames 5..7."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(8, 16, D, generator=g)
    frames[:5, :10] = torch.randn(1, 10, D, generator=g) + 0.05 * torch.randn(5, 10, D, generator=g)
    frames[5:, :6] = torch.randn(1, 6, D, generator=g) + 0.05 * torch.randn(3, 6, D, generator=g)
    return frames.view(8, 4, 4, D)


def _expected_count(frames: torch.Tensor, ratio: float, tau: float) -> int:
    """The reference's kept count, from the definitions: DP windows, rho' = min(rho / ((TN - R) / TN), 1),
    round(n_static * rho') merged static tokens and ceil(n_dynamic * rho') tokens per frame."""
    t, h, w, _ = frames.shape
    n = h * w
    above = consecutive_similarity(frames.view(t, n, -1)) > tau
    windows, removed = best_segmentation(window_counts(above), 1024)
    rho = min(ratio / ((t * n - removed) / (t * n)), 1)
    total = 0
    for s, e in windows:
        n_static = int(above[s:e].all(0).sum()) if e > s else 0
        total += round(n_static * rho) + (e - s + 1) * (math.ceil((n - n_static) * rho) if n > n_static else 0)
    return total


def test_repeated_frames_collapse_to_one_segment_and_far_fewer_tokens_than_noise():
    repeated = _video(_noise_frames(1).repeat(16, 1, 1, 1))
    noise = _video(_noise_frames(16))
    method = HoliTom(budget=0.5)
    windows, removed = method.segment(repeated)
    assert [(w.first, w.last) for w in windows] == [(0, 15)] and removed == 15 * 16
    assert [(w.first, w.last) for w in method.segment(noise)[0]] == [(t, t) for t in range(16)]
    kept_repeated, kept_noise = (method.reduce(item).kept.numel() for item in (repeated, noise))
    assert kept_repeated == 16 and kept_noise == 128  # one frame's worth vs half of 256
    assert kept_repeated * 4 < kept_noise


def _boundary_frames() -> torch.Tensor:
    """2 frames of 2x2 positions whose consecutive-frame cosine similarities are exactly 0.5, 0.5, 1 and 0
    (unit vectors with exact float32 dot products)."""
    e1, e2, mean = torch.eye(4)[0], torch.eye(4)[1], torch.full((4,), 0.5)
    first = torch.stack([e1, e1, e1, e1])
    second = torch.stack([mean, mean, e1, e2])
    return torch.stack([first, second]).view(2, 2, 2, 4)


# (tau, static positions, kept tokens at budget=1.0) worked out by hand from "static = similarity strictly above
# tau": T*N = 8; a 2-frame window with s static positions removes R = s, rho' = 1, and keeps s merged tokens plus
# both frames' 4 - s dynamic ones: 8 - s tokens
TAU_BOUNDARY = [(0.5, [False, False, True, False], 7), (1.0, [False] * 4, 8), (0.0, [True, True, True, False], 5)]


@pytest.mark.parametrize("tau,static,kept", TAU_BOUNDARY)
def test_a_similarity_exactly_at_tau_is_not_static(tau, static, kept):
    frames = _boundary_frames()
    assert consecutive_similarity(frames.view(2, 4, 4)).tolist() == [[0.5, 0.5, 1.0, 0.0]]  # exact, as built
    item = _video(frames)
    windows, removed = HoliTom(budget=1.0, tau=tau).segment(item)
    assert removed == sum(static)
    if any(static):
        assert [(w.first, w.last) for w in windows] == [(0, 1)] and windows[0].static.tolist() == static
    assert HoliTom(budget=1.0, tau=tau).reduce(item).kept.numel() == kept


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_count_matches_the_reallocation_formula(budget, seed):
    frames = _partly_static_frames(seed)
    reduction = HoliTom(budget=budget).reduce(_video(frames))
    ratio = budget if isinstance(budget, float) else budget / 128
    assert reduction.kept.numel() == _expected_count(frames, ratio, 0.8)
    windows, _ = HoliTom(budget=budget).segment(_video(frames))
    assert [(w.first, w.last) for w in windows] == [(0, 4), (5, 7)]


def test_output_order_origins_provenance_and_the_beta_merge():
    frames = _partly_static_frames(0)
    item = _video(frames)
    method = HoliTom(budget=0.25)
    reduction = method.reduce(item)
    flat = frames.reshape(8, 16, D)
    rho = min(0.25 / ((128 - (10 * 4 + 6 * 2)) / 128), 1)
    scores = item.attention["holitom"][0].view(8, 16)
    offset = 0
    for first, last, n_static in [(0, 4, 10), (5, 7, 6)]:
        width, c, k = last - first + 1, round(n_static * rho), math.ceil((16 - n_static) * rho)
        means = flat[first:last + 1, :n_static].mean(0)
        distances = scaled_distances(means)
        centres = dpc_knn_centres(distances, c, min(7, c))
        cluster = nearest_centre(distances, centres)
        origin = reduction.origin[offset:offset + c + width * k]
        # static merged tokens first, by centre index, at the centre's position in the window's first frame
        assert origin[:c].tolist() == (first * 16 + centres).tolist()
        for j in range(c):
            members = [p for p in range(n_static) if int(cluster[p]) == j and p != int(centres[j])]
            expected = means[centres[j]] if not members else 0.6 * means[centres[j]] + 0.4 * means[members].mean(0)
            torch.testing.assert_close(reduction.features[offset + j], expected, rtol=1e-5, atol=1e-5)
            stands_for = (reduction.assignment == offset + j).nonzero().flatten().tolist()
            positions = [p for p in range(n_static) if int(cluster[p]) == j]
            assert stands_for == sorted(f * 16 + p for f in range(first, last + 1) for p in positions)
        # then every frame's dynamic tokens: the k most attended, in spatial order
        for f in range(width):
            got = origin[c + f * k:c + (f + 1) * k]
            frame = first + f
            top = torch.sort(scores[frame, n_static:], descending=True, stable=True).indices[:k] + n_static
            top = top.sort().values
            assert got.tolist() == (frame * 16 + top).tolist()
            assert torch.equal(reduction.features[offset + c + f * k:offset + c + (f + 1) * k], flat[frame, top])
        # the window's outputs fill its own slots in ascending order
        assert reduction.kept[offset:offset + c + width * k].tolist() == sorted(origin.tolist())
        offset += c + width * k
    assert offset == reduction.kept.numel()


def test_weights_merge_side_outputs_like_the_features():
    """``Reduction.apply`` (Qwen3-VL's deepstack features) reproduces the merged features exactly."""
    item = _video(_partly_static_frames(1))
    reduction = HoliTom(budget=0.2).reduce(item)
    torch.testing.assert_close(reduction.apply(item.features), reduction.features)


def test_keep_all_returns_every_token_unchanged():
    item = _video(_partly_static_frames(0))
    reduction = HoliTom(budget=1.0, tau=1.5).reduce(item)
    assert torch.equal(reduction.kept, torch.arange(128)) and torch.equal(reduction.origin, reduction.kept)
    assert torch.equal(reduction.features, item.features)


def test_images_keep_the_most_attended_tokens_of_each_grid():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(4 + 12, D, generator=g)
    scores = torch.rand(16, generator=g)
    item = VisualItem(features, (Segment(0, (1, 2, 2)), Segment(4, (1, 3, 4))), "image", 0,
                      {"holitom": (scores, torch.zeros(16, 2))})
    reduction = HoliTom(budget=0.3).reduce(item)
    expected = [torch.sort(scores[:4], descending=True).indices[:2].sort().values,  # ceil(4 * 0.3)
                4 + torch.sort(scores[4:], descending=True).indices[:4].sort().values]  # ceil(12 * 0.3)
    assert reduction.kept.tolist() == torch.cat(expected).tolist()


def test_noise_is_opt_in_and_reproducible():
    item = _video(_partly_static_frames(2))
    plain = HoliTom(budget=0.1).reduce(item)
    assert torch.equal(plain.features, HoliTom(budget=0.1).reduce(item).features)
    noisy = [HoliTom(budget=0.1, noise=1e-6, seed=4).reduce(item) for _ in range(2)]
    assert torch.equal(noisy[0].features, noisy[1].features)


@pytest.mark.parametrize("options, message", [
    (dict(tau="high"), "tau must be a number"), (dict(k=0), "k must be an int >= 1"),
    (dict(max_window=1.5), "max_window must be an int"), (dict(beta=1.2), "beta"), (dict(noise=-1.0), "noise"),
    (dict(budget=0.0), "fractional budget must lie in"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        HoliTom(**{"budget": 0.1, **options})


def test_building_by_name_needs_a_budget_and_an_int_is_tokens_per_video():
    with pytest.raises(ValueError, match="needs a budget"):
        make_method("holitom")
    assert make_method("holitom", 64, tau=0.65) == HoliTom(budget=64, tau=0.65)
    assert HoliTom(budget=64).retain_ratio(640) == 0.1 and HoliTom(budget=0.1).retain_ratio(640) == 0.1


# ---------------------------------------------------------------------- end to end on tiny video models
VIDEO_SIZE = {"llava_onevision": (32, 32), "llava_next_video": (32, 32), "qwen2_5_vl": (64, 48), "qwen3_vl": (64, 48)}


def _video_inputs(processor, name: str, kinds=("repeated",), texts=None, seeds=None):
    """Processor outputs for one video per entry: a repeated random frame, or random noise frames."""
    width, height = VIDEO_SIZE[name]
    seeds = seeds or range(len(kinds))
    videos = [np.repeat(testing.random_video(1, width, height, seed=s), 4, axis=0) if kind == "repeated"
              else testing.random_video(4, width, height, seed=s) for s, kind in zip(seeds, kinds)]
    texts = texts or ["what is in the video ?"] * len(kinds)
    prompts = [testing.prompt(processor, t, images=0, videos=1) for t in texts]
    return processor(videos=videos, text=prompts, return_tensors="pt", padding=True)


def _assert_cached_equals_uncached(model, inputs, greedy):
    cached = model.generate(**inputs, **greedy)
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    return cached


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video", "qwen2_5_vl", "qwen3_vl"])
def test_end_to_end_merges_repeated_frames_and_cached_equals_uncached(tiny, name):
    model, processor = tiny(name)
    inputs = _video_inputs(processor, name, kinds=("repeated", "noise"))
    vtr.wrap(model, "holitom", budget=0.1)
    _assert_cached_equals_uncached(model, inputs, greedy_without_placeholders(model))
    repeated, noise = (sample.items[0] for sample in vtr.stats(model).samples)
    assert noise.content_after < noise.content_before
    frames = 2 if name.startswith("qwen") else 4  # qwen: 2 temporal patches of 2 frames
    per_frame = repeated.content_before // frames
    # one segment: rho' = min(0.1 * frames, 1), round(per_frame * rho') clusters, each standing for its
    # members in every frame (nothing dropped)
    assert repeated.content_after == round(per_frame * min(0.1 * frames, 1.0)) < per_frame
    provenance = torch.tensor(repeated.provenance)
    assert bool((provenance >= 0).all())
    for frame in provenance.view(frames, per_frame):
        assert torch.equal(frame, provenance[:per_frame])


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_5_vl"])
def test_keep_all_is_bit_identical_to_the_unwrapped_model(tiny, name):
    model, processor = tiny(name)
    inputs = _video_inputs(processor, name, kinds=("repeated", "noise"), texts=["what ?", "describe this video ?"])
    greedy = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)
    expected = model.generate(**inputs, **greedy)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    with vtr.reduced(model, "holitom", budget=1.0, tau=1.5):
        got = model.generate(**inputs, **greedy)
        with torch.no_grad():
            got_logits = model(**inputs).logits
        assert vtr.stats(model).visual_after == vtr.stats(model).visual_before
    real = inputs["attention_mask"].bool()
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, expected.scores))
    assert torch.equal(got_logits[real], expected_logits[real])


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_5_vl"])
def test_padded_batch_equals_its_rows_alone(tiny, name):
    model, processor = tiny(name)
    texts = ["what ?", "describe this video please , what is in it ?"]
    inputs = _video_inputs(processor, name, kinds=("repeated", "noise"), texts=texts)
    assert (inputs["attention_mask"] == 0).any(), "the test needs left padding"
    greedy = greedy_without_placeholders(model)
    vtr.wrap(model, "holitom", budget=0.25)
    batch = model.generate(**inputs, **greedy)
    batch_stats = vtr.stats(model).samples
    n_new = greedy["max_new_tokens"]
    for row, kind in enumerate(("repeated", "noise")):
        alone = model.generate(**_video_inputs(processor, name, kinds=(kind,), texts=[texts[row]], seeds=(row,)),
                               **greedy)
        assert vtr.stats(model).samples[0].items == batch_stats[row].items
        assert torch.equal(alone.sequences[0, -n_new:], batch.sequences[row, -n_new:])


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_5_vl"])
def test_composition_with_the_inner_merge_generates_and_cached_equals_uncached(tiny, name):
    model, processor = tiny(name)
    inputs = _video_inputs(processor, name, kinds=("repeated", "noise"))
    vtr.wrap(model, [HoliTom(budget=0.25), HoliTomInner(budget=0.5, layer=2)])
    _assert_cached_equals_uncached(model, inputs, greedy_without_placeholders(model))
    for sample in vtr.stats(model).samples:
        per_layer = sample.visual_per_layer
        assert per_layer[0] == sample.visual_after and per_layer[-1] < per_layer[1]


def test_original_positions_come_from_the_origins_on_qwen(tiny):
    """Static merged tokens take their centre's M-RoPE (t, h, w) in the segment's first temporal patch."""
    model, processor = tiny("qwen2_5_vl")
    inputs = dict(_video_inputs(processor, "qwen2_5_vl", kinds=("repeated",)))
    inputs["second_per_grid_ts"] = torch.tensor([1.0])  # temporal patches one M-RoPE step apart or more
    vtr.wrap(model, "holitom", budget=0.1)
    state = model._vtr_state
    full = state.adapter.positions(state.adapter.fill_missing_inputs(inputs), for_generate=True)
    call = reduce_inputs(state.adapter, state.pipeline.pre_llm, "original", dict(inputs), for_generate=True)
    video = (inputs["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    kept_video = (call.kwargs["input_ids"][0] == model.config.video_token_id).nonzero().flatten()
    assert kept_video.numel() < video.numel()
    positions = call.kwargs["position_ids"][1:, 0, kept_video]  # t/h/w rows of the kept video tokens
    t_rows = positions[0]
    assert full[1, 0, video].unique().numel() == 2
    assert bool((t_rows == full[1, 0, video[0]]).all())  # one segment: every token in the first patch
    hw = positions[1:].T.tolist()
    grid_hw = full[2:, 0, video[:48]].T.tolist()  # (h, w) of the first temporal patch's 48 tokens
    assert all(p in grid_hw for p in hw) and len({tuple(p) for p in hw}) == len(hw)


@pytest.mark.parametrize("positions", ["original", "compact", "ppe"])
@pytest.mark.parametrize("name, tau", [("llava_onevision", 0.5), ("qwen2_5_vl", 0.15)])
def test_segments_mixing_static_and_dynamic_tokens_cached_equals_uncached(tiny, name, tau, positions):
    """A tau between the noise video's similarities: windows hold static clusters and dynamic tokens, so the
    reference order puts original positions out of order; generation must still be exact (PPE: the model
    gets the original ids, merged tokens' chunks rotate with their members' positions over the frames)."""
    model, processor = tiny(name)
    inputs = _video_inputs(processor, name, kinds=("noise",))
    vtr.wrap(model, "holitom", budget=0.5, tau=tau, positions=positions)
    _assert_cached_equals_uncached(model, inputs, greedy_without_placeholders(model))
    state = model._vtr_state
    call = reduce_inputs(state.adapter, state.pipeline.pre_llm, positions, dict(inputs), for_generate=True)
    video = call.kwargs["input_ids"][0] == model.config.video_token_id
    provenance = torch.tensor(vtr.stats(model).samples[0].items[0].provenance)
    per_frame = provenance.numel() // (4 if name == "llava_onevision" else 2)
    members = [(provenance == out).nonzero().flatten() // per_frame for out in range(int(provenance.max()) + 1)]
    assert any(frames.unique().numel() > 1 for frames in members)  # a static token merged over frames
    assert any(frames.numel() == 1 for frames in members)  # and a dynamic one
    if name == "llava_onevision":  # 1-D: the reference order takes original positions out of order
        video_positions = call.kwargs["position_ids"][0, video]
        increasing = bool((video_positions[1:] > video_positions[:-1]).all())
        assert increasing == (positions == "compact")
