"""PPE in the decoder (vtr.llm.ppe) and positions="ppe" end to end: rotary exactness, keep-all identity,
per-chunk positions of merged tokens, exact KV cache, padding, cascade with in-LLM stages, decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import vtr
import vtr.llm.ppe as ppe_module
from conftest import GREEDY, greedy_without_placeholders, make_inputs, padded_inputs, row_alone
from vtr import testing
from vtr.adapters import adapter_for
from vtr.engine import reduce_inputs
from vtr.llm.ppe import chunked_rotary, frequency_chunks
from vtr.methods import KeepAll, Method, Pool, Stage, ToMe
from vtr.methods.base import Reduction, VisualItem
from vtr.ops.grid import group_mean
from vtr.positions import PositionScheme

FAMILIES = ["llava", "qwen2_5_vl", "qwen3_vl"]
# merging methods with provenance: pre-LLM (pool, visionzip's contextual tokens) and in the vision encoder (tome)
MERGES = {"pool": dict(budget=0.4), "visionzip": dict(budget=0.5), "tome": dict(budget=30)}


def _rotary_of(name: str):
    model, _ = testing.build(name)
    adapter = adapter_for(model)
    return adapter.decoder().rotary_emb, adapter.rope_rows


def _random_positions(rows: int, batch: int, length: int, chunks: int = 1) -> torch.Tensor:
    return torch.randint(0, 200, (rows, batch, length, chunks))


def _same_generation(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


# ---------------------------------------------------------------------------------------------- rotary


def _axis_bands(kind: str, half: int, sections: list[int]) -> list[torch.Tensor]:
    """The frequencies each axis reads, written out from the M-RoPE definitions."""
    f = torch.arange(half)
    if kind == "sections":  # Qwen2-VL / 2.5-VL: contiguous t, h, w sections
        bounds = torch.tensor([0, *torch.tensor(sections).cumsum(0).tolist()])
        return [f[(f >= bounds[a]) & (f < bounds[a + 1])] for a in range(3)]
    h = (f % 3 == 1) & (f < 3 * sections[1])  # Qwen3-VL: h and w interleaved into the t section
    w = (f % 3 == 2) & (f < 3 * sections[2])
    return [f[~h & ~w], f[h], f[w]]


@pytest.mark.parametrize("kind,sections", [("sections", [16, 24, 24]), ("interleaved", [24, 20, 20])])
def test_every_axis_is_split_into_chunks_contiguous_bands(kind, sections):
    from transformers import Qwen2_5_VLTextConfig, Qwen3VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": sections}
    if kind == "sections":
        rotary = Qwen2_5_VLRotaryEmbedding(Qwen2_5_VLTextConfig(hidden_size=2048, num_attention_heads=16,
                                                                rope_parameters=rope))
    else:
        rotary = Qwen3VLTextRotaryEmbedding(Qwen3VLTextConfig(hidden_size=2048, num_attention_heads=16, head_dim=128,
                                                              rope_parameters={**rope, "mrope_interleaved": True}))
    chunk = frequency_chunks(rotary, 3, 8)
    assert torch.equal(chunk[:64], chunk[64:])  # both rotate-half dimensions of a frequency: one chunk
    for band in _axis_bands(kind, 64, sections):
        of_band = chunk[band]
        assert torch.equal(of_band, of_band.sort().values)  # contiguous, in frequency order
        sizes = torch.bincount(of_band, minlength=8)
        assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    if kind == "sections":  # the paper's layout: every chunk holds 2 t, 3 h and 3 w frequencies
        assert [torch.bincount(chunk[b], minlength=8).tolist() for b in _axis_bands(kind, 64, sections)] == [
            [2] * 8, [3] * 8, [3] * 8]


def test_one_d_rope_is_split_into_equal_frequency_bands():
    rotary, rows = _rotary_of("llava")  # head_dim 16: 8 frequencies
    assert frequency_chunks(rotary, rows, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2


@pytest.mark.parametrize("name", FAMILIES)
def test_chunks_sharing_one_position_give_exactly_the_models_cos_sin(name):
    rotary, rows = _rotary_of(name)
    positions = _random_positions(rows, 2, 7)
    like = torch.zeros(1)
    expected = rotary(like, positions[..., 0] if rows == 3 else positions[0, ..., 0])
    got = chunked_rotary(rotary, frequency_chunks(rotary, rows, 8), positions.expand(-1, -1, -1, 8), like)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_each_frequency_rotates_with_its_chunks_position_and_stays_a_rotation(name):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    rotary, rows = _rotary_of(name)
    chunk_of_dim = frequency_chunks(rotary, rows, 4)
    positions = _random_positions(rows, 2, 5, chunks=4)
    like = torch.zeros(1)
    cos, sin = chunked_rotary(rotary, chunk_of_dim, positions, like)
    for c in range(4):
        own_cos, own_sin = rotary(like, positions[..., c] if rows == 3 else positions[0, ..., c])
        here = chunk_of_dim == c
        assert torch.equal(cos[..., here], own_cos[..., here]) and torch.equal(sin[..., here], own_sin[..., here])
    q = torch.randn(2, 3, 5, cos.shape[-1])
    rotated, _ = apply_rotary_pos_emb(q, q, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))


@pytest.mark.parametrize("kind", ["sliding_attention", "full_attention"])
def test_per_layer_type_rotary_is_chunked_per_type(kind):
    """Gemma 4's local layers (default RoPE) and global ones (proportional, a quarter of the dimensions
    rotated: the others read no position and sit in chunk 0): one position in every chunk gives exactly the
    model's cos/sin of that type, and each rotated frequency moves with its own chunk."""
    rotary, rows = _rotary_of("gemma4")
    chunk_of_dim = frequency_chunks(rotary, rows, 4, kind)
    like = torch.zeros(1)
    positions = _random_positions(rows, 2, 7)
    expected = rotary(like, positions[0, ..., 0], kind)
    got = chunked_rotary(rotary, chunk_of_dim, positions.expand(-1, -1, -1, 4), like, kind)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    positions = _random_positions(rows, 2, 5, chunks=4)
    cos, sin = chunked_rotary(rotary, chunk_of_dim, positions, like, kind)
    for c in range(4):
        own_cos, own_sin = rotary(like, positions[0, ..., c], kind)
        here = chunk_of_dim == c
        assert torch.equal(cos[..., here], own_cos[..., here]) and torch.equal(sin[..., here], own_sin[..., here])


def test_gemma4_kv_sharing_layers_take_the_last_columns_of_the_ppe_positions():
    """Transformers runs Gemma 4's KV-sharing layers on the prompt's last token in generate: they get the last
    columns of the PPE cos/sin the layers before them got; cached == uncached, with an in-LLM stage too."""
    model, processor = testing.build_gemma4(**testing.GEMMA4_KV_SHARING)
    inputs = padded_inputs(processor, "gemma4")
    greedy = greedy_without_placeholders(model, **GREEDY, min_new_tokens=GREEDY["max_new_tokens"])
    for methods, options in ((["pool"], {}), (["pool", "fastv"], dict(layer=2))):
        with vtr.reduced(model, methods, budget=0.4, positions="ppe", **options):
            _cached_equals_uncached(model, inputs, greedy)


def test_sequence_dependent_rope_types_are_refused():
    rotary, rows = _rotary_of("llava")
    rotary.rope_type = "dynamic"
    with pytest.raises(vtr.ReductionError, match="positions='original'"):
        frequency_chunks(rotary, rows, 8)


# ---------------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("name", FAMILIES + ["qwen2_vl", "llava_onevision", "internvl", "gemma3", "gemma4"])
def test_keep_all_with_ppe_is_bit_identical_to_unwrapped(tiny, name, monkeypatch):
    """Every token is its own single member: all its chunks hold its position, through the PPE path."""
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    expected = model.generate(**inputs, **GREEDY)
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    calls = []
    monkeypatch.setattr(ppe_module, "chunked_rotary", lambda *a: calls.append(1) or chunked_rotary(*a))
    with vtr.reduced(model, "divprune", budget=1.0, positions="ppe"):
        got = model.generate(**inputs, **GREEDY)
        with torch.no_grad():
            got_logits = model(**inputs).logits
    assert calls, "the PPE cos/sin were never built"
    assert _same_generation(got, expected)
    assert torch.equal(got_logits, expected_logits)


# ---------------------------------------------------------------------------------------------- chunk positions


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("members", ["highest", "nearest"])
def test_chunk_positions_are_the_chosen_members_original_positions(tiny, name, members):
    model, processor = tiny(name)
    inputs = make_inputs(processor, name)
    adapter = adapter_for(model)
    chunks = 4
    call = reduce_inputs(adapter, Pool(budget=6), PositionScheme("ppe", chunks, members), dict(inputs), True)
    item = call.stats.samples[0].items[0]
    provenance = torch.tensor(item.provenance)
    full = adapter.rope_positions(adapter.positions(adapter.fill_missing_inputs(dict(inputs)), True))[:, 0]  # (R, L)
    placeholder = adapter.placeholder_token_id("image")
    columns = (inputs["input_ids"][0] == placeholder).nonzero().squeeze(1)
    features = adapter.item_features("image", adapter.encode("image", adapter.fill_missing_inputs(dict(inputs))))[0]
    kept_index = call.kept_index[0]
    merged = 0
    for out in range(int(provenance.max()) + 1):
        group = (provenance == out).nonzero().squeeze(1)
        if members == "highest":
            order = group.flip(0)
        else:  # nearest the box's mean feature, ties to the lower index
            distance = ((features[group] - features[group].mean(0)) ** 2).sum(-1)
            order = group[distance.argsort(stable=True)]
        chosen = order[torch.arange(chunks) % group.numel()]
        slot = columns[group.min()]  # pool's token sits in its box's first slot
        column = (kept_index == slot).nonzero().item()
        assert torch.equal(call.chunk_positions[:, 0, column], full[:, columns[chosen]])
        merged += group.numel() > 1
    assert merged > 0
    text = call.kwargs["input_ids"][0] != placeholder  # text keeps its own position in every chunk
    assert torch.equal(call.chunk_positions[:, 0, text], full[:, kept_index[text]].unsqueeze(-1).expand(-1, -1, 4))


def test_ppe_changes_only_the_merged_tokens_cos_sin(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = padded_inputs(processor, "qwen2_5_vl")
    received = {}

    def keep(module, args, kwargs):
        received.setdefault(positions, kwargs["position_embeddings"])

    handle = model.model.language_model.layers[0].register_forward_pre_hook(keep, with_kwargs=True)
    for positions in ("original", "ppe"):
        with vtr.reduced(model, "pool", budget=0.4, positions=positions):
            with torch.no_grad():
                model(**inputs)
            call_positions = model._vtr_state.pipeline.ppe.run if positions == "ppe" else None
    handle.remove()
    assert call_positions is None  # the run ends with the call
    call = reduce_inputs(adapter_for(model), Pool(budget=0.4), "ppe", dict(inputs), False)
    single = (call.chunk_positions == call.chunk_positions[..., :1]).all(-1).all(0)  # (B, L') one position
    for a, b in zip(received["original"], received["ppe"]):
        assert torch.equal(a[single], b[single])
        assert not torch.equal(a[~single], b[~single])
    assert (~single).sum() > 0


# ---------------------------------------------------------------------------------------------- exact cache


def _wrapped(tiny, name: str, method, **options):
    """(model wrapped with ``method`` and PPE, left-padded two-row inputs, greedy generate kwargs)."""
    model, processor = tiny(name)
    vtr.wrap(model, method, positions="ppe", **options)
    return model, padded_inputs(processor, name), greedy_without_placeholders(model)


def _cached_equals_uncached(model, inputs, greedy):
    cached = model.generate(**inputs, **greedy)
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    return cached


@pytest.mark.parametrize("name,method", [("llava", "pool"), ("llava", "visionzip"), ("llava", "tome"),
                                         ("qwen2_5_vl", "pool"), ("qwen2_5_vl", "visionzip"),
                                         ("qwen3_vl", "visionzip"), ("llava_next", "pool"), ("internvl", "pool"),
                                         ("gemma3", "pool"), ("gemma4", "pool")])
def test_cached_generate_equals_uncached_recompute_with_ppe(tiny, name, method):
    model, inputs, greedy = _wrapped(tiny, name, method, **MERGES[method])
    cached = _cached_equals_uncached(model, inputs, greedy)
    vtr.wrap(model, method, positions="original", **MERGES[method])
    original = model.generate(**inputs, **greedy)
    assert not torch.equal(original.scores[0], cached.scores[0]), "PPE changed nothing: the test needs merges"


def test_beam_search_repeats_the_chunk_positions_of_each_row(tiny):
    model, inputs, greedy = _wrapped(tiny, "qwen2_5_vl", "pool", budget=0.4)
    received = []
    handle = model.model.language_model.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["position_embeddings"][0]), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    beams = dict(max_new_tokens=4, num_beams=2, do_sample=False, suppress_tokens=greedy["suppress_tokens"])
    cached = model.generate(**inputs, **beams)
    handle.remove()
    assert torch.equal(received[1], received[0].repeat_interleave(2, dim=0))  # beam prefill: rows 0, 0, 1, 1
    assert torch.equal(cached, model.generate(**inputs, **beams, use_cache=False))


@pytest.mark.parametrize("name,method", [("llava", "visionzip"), ("qwen2_5_vl", "pool"), ("internvl", "visionzip"),
                                         ("gemma4", "pool")])
def test_padded_batch_with_ppe_equals_rows_alone(tiny, name, method):
    model, inputs, greedy = _wrapped(tiny, name, method, **MERGES[method])
    batch = model.generate(**inputs, **greedy)
    new = batch.sequences[:, inputs["input_ids"].shape[1]:]
    for i in range(2):
        alone = model.generate(**row_alone(inputs, i), **greedy)
        assert torch.equal(alone.sequences[0, -new.shape[1]:], new[i])
        for step_batch, step_alone in zip(batch.scores, alone.scores):
            torch.testing.assert_close(step_batch[i], step_alone[0], rtol=0, atol=1e-5)


def test_decoding_continues_at_the_positions_of_the_unreduced_model(tiny):
    """After a PPE prefill, each new token takes the position the unwrapped model gives it."""
    model, processor = tiny("qwen2_5_vl")
    inputs = padded_inputs(processor, "qwen2_5_vl")
    seen = []
    handle = model.model.language_model.rotary_emb.register_forward_pre_hook(
        lambda module, args: seen.append(args[1].clone()))
    model.generate(**inputs, max_new_tokens=3, do_sample=False)
    unwrapped, seen[:] = list(seen), []
    with vtr.reduced(model, "pool", budget=0.4, positions="ppe"):
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    handle.remove()
    assert seen[0].shape[-1] < unwrapped[0].shape[-1]  # the prefill was reduced
    steps = [s for s in seen if s.shape[-2:] == (2, 1)]  # seen also holds PPE's probe and per-chunk calls
    assert len(steps) == len(unwrapped[1:]) == 2
    for got, expected in zip(steps, unwrapped[1:]):
        assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------- cascade


@pytest.mark.parametrize("name,methods", [("llava", ["visionzip", "holitom_inner"]), ("qwen2_5_vl", ["pool", "fastv"])])
def test_in_llm_stage_keeps_the_ppe_positions_of_the_tokens_it_keeps(tiny, name, methods):
    model, inputs, greedy = _wrapped(tiny, name, methods, budget=0.5, layer=2)
    layers = model.model.language_model.layers
    received = {}

    def keeper(layer):
        def hook(module, args, kwargs):
            received.setdefault(layer, kwargs["position_embeddings"])

        return hook

    handles = [layers[i].self_attn.register_forward_pre_hook(keeper(i), with_kwargs=True) for i in (0, 3)]
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    final = model._vtr_state.pipeline.in_llm.run.final_index()  # (B, N) prefill column of each layer-3 column
    assert final.shape[1] < received[0][0].shape[1]
    valid = final >= 0
    for entering, deep in zip(received[0], received[3]):
        expected = entering.gather(1, final.clamp_min(0).unsqueeze(-1).expand(-1, -1, entering.shape[-1]))
        assert torch.equal(deep[valid], expected[valid])
    _cached_equals_uncached(model, inputs, greedy)


# ---------------------------------------------------------------------------------------------- lifecycle


def _pre_hooks(model) -> list[int]:
    return [len(layer._forward_pre_hooks) for layer in model.model.language_model.layers]


def test_unwrap_and_rewrap_remove_the_ppe_hooks_and_reduced_restores_the_scheme(tiny):
    model, processor = tiny("llava")
    bare = _pre_hooks(model)
    vtr.wrap(model, "pool", budget=0.4, positions="ppe", ppe_chunks=4, ppe_members="highest")
    assert _pre_hooks(model) != bare
    with vtr.reduced(model, "pool", budget=0.4):
        assert _pre_hooks(model) == bare
    assert model._vtr_state.positions == PositionScheme("ppe", 4, "highest")
    model.generate(**make_inputs(processor, "llava"), max_new_tokens=2, do_sample=False)
    assert vtr.stats(model).positions == "ppe"
    vtr.wrap(model, "pool", budget=0.4)
    assert _pre_hooks(model) == bare
    vtr.wrap(model, "pool", budget=0.4, positions="ppe")
    vtr.unwrap(model)
    assert _pre_hooks(model) == bare


def test_bad_ppe_options_are_rejected(tiny):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="only apply with positions='ppe'"):
        vtr.wrap(model, "pool", budget=0.4, ppe_chunks=4)
    with pytest.raises(ValueError, match="ppe_members"):
        vtr.wrap(model, "pool", budget=0.4, positions="ppe", ppe_members="centre")
    with pytest.raises(ValueError, match="vtu=True"):
        vtr.wrap(model, "dymu", thresholds=[0.6, 0.6], positions="ppe")
    assert not vtr.is_wrapped(model)


def test_encoder_merges_take_the_members_nearest_their_mean_position(tiny):
    """tome leaves no per-member features at the LLM input: "nearest" falls back to the position proxy."""
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    adapter = adapter_for(model)
    call = reduce_inputs(adapter, KeepAll(), PositionScheme("ppe", 4), dict(inputs), True, ToMe(budget=20))
    provenance = torch.tensor(call.stats.samples[0].items[0].provenance)
    columns = (inputs["input_ids"][0] == adapter.placeholder_token_id("image")).nonzero().squeeze(1)
    kept_index = call.kept_index[0]
    merged = 0
    for out in range(int(provenance.max()) + 1):
        group = (provenance == out).nonzero().squeeze(1)
        positions = columns[group].float()  # 1-D RoPE, one unpadded row: a token's position is its column
        order = group[((positions - positions.mean()) ** 2).argsort(stable=True)]
        column = (kept_index.unsqueeze(1) == columns[group]).any(1).nonzero().item()  # the merged token's slot
        assert call.chunk_positions[0, 0, column].tolist() == columns[order[torch.arange(4) % group.numel()]].tolist()
        merged += group.numel() > 1
    assert merged > 0


def test_a_token_pooled_over_a_video_carries_its_members_positions(tiny):
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl", "video")
    scheme = PositionScheme("ppe", 64, "highest")  # the 64 highest of the 2x6x8 members
    call = reduce_inputs(adapter_for(model), Pool(budget=1), scheme, dict(inputs), True)
    video = call.kwargs["input_ids"][0] == model.config.video_token_id
    assert int(video.sum()) == 1
    _, h, w = call.chunk_positions[:, 0, video][:, 0]  # the one token's 64 chunks
    assert h.unique().numel() == 6 and w.unique().numel() == 8
    vtr.wrap(model, "pool", budget=1, positions="ppe")
    _cached_equals_uncached(model, inputs, greedy_without_placeholders(model))


@dataclass(frozen=True)
class _FoldFrames(Method):
    """Merges every video token into the token at the same (h, w) cell of the first temporal step."""

    name: ClassVar[str] = "fold_frames"
    stage: ClassVar[Stage] = Stage.PRE_LLM

    def reduce(self, item: VisualItem) -> Reduction:
        _, h, w = item.segments[0].grid
        assignment = torch.arange(item.num_tokens, device=item.features.device) % (h * w)
        return Reduction(kept=torch.arange(h * w, device=item.features.device),
                         features=group_mean(item.features, assignment, h * w), assignment=assignment)


def test_merged_tokens_whose_members_share_one_position_match_standard_m_rope(tiny, monkeypatch):
    """Tiny Qwen2.5-VL videos give both temporal steps the same t (0.083 s per step at 4 tokens/s), so
    folding step 1 into step 0 merges tokens at one (t, h, w): PPE must then equal plain M-RoPE."""
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl", "video")
    adapter = adapter_for(model)
    rope = adapter.rope_positions(adapter.positions(adapter.fill_missing_inputs(dict(inputs)), True))[:, 0]
    video = rope[:, inputs["input_ids"][0] == model.config.video_token_id]
    assert torch.equal(video[:, :48], video[:, 48:])  # the premise: members share their position
    greedy = greedy_without_placeholders(model)
    outputs = {}
    calls = []
    monkeypatch.setattr(ppe_module, "chunked_rotary", lambda *a: calls.append(1) or chunked_rotary(*a))
    for positions in ("original", "ppe"):
        with vtr.reduced(model, _FoldFrames(), positions=positions):
            with torch.no_grad():
                logits = model(**inputs).logits
            outputs[positions] = (logits, model.generate(**inputs, **greedy))
            assert vtr.stats(model).samples[0].items[0].after == 48
    assert calls
    assert torch.equal(outputs["original"][0], outputs["ppe"][0])
    assert _same_generation(outputs["original"][1], outputs["ppe"][1])
