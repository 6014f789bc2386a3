"""PDrop against a loop that follows the reference code's definition (``pdrop_rank_drop``), its kept
variants (FastV-convention scoring, original positions, rounding), and the equivalent-token budget."""

from __future__ import annotations

import math

import pytest
import torch

import vtr
from conftest import greedy_without_placeholders, make_inputs, padded_inputs, row_alone
from vtr.errors import UnreachableBudgetError
from vtr.methods import PDrop
from vtr.methods.pdrop import count_schedule


def _layer_input(model, inputs) -> torch.Tensor:
    """The hidden states entering decoder layer 0 of the unwrapped model (text and image embeddings)."""
    seen = []
    hook = model.model.language_model.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def _reference_pdrop(model, hidden, image: torch.Tensor, prompt_len: int, stages, ratio: float,
                     score_layer: str = "own", renumber: bool = True, rounding=math.floor):
    """One row, written out like the reference: run the decoder layer by layer; after layer K-1 (K a
    stage layer) score the image tokens with the last instruction token's attention, computed from
    layer K's input_layernorm / q_proj / k_proj (``score_layer="own"``) or layer K-1's (``"previous"``),
    RoPE at the current positions, causal softmax in float32, mean over heads; keep the top
    ``rounding(N * ratio ** (s + 1))`` in sequence order and renumber positions 0, 1, 2, ... (or keep
    the original ones). Columns after ``prompt_len`` (generated tokens) are never dropped.

    Returns the kept original columns after each stage and the last column's logits."""
    decoder = model.model.language_model
    columns = torch.arange(hidden.shape[1])  # original column of every current column
    positions = columns.clone()
    n = int(image.sum())
    kept_per_stage = []
    previous_input = None
    with torch.no_grad():
        for index, layer in enumerate(decoder.layers):
            cos, sin = decoder.rotary_emb(hidden, positions.unsqueeze(0))
            previous_input = (layer.input_layernorm(hidden), (cos, sin))
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin))
            if index + 1 not in stages:
                continue
            stage = stages.index(index + 1)
            if score_layer == "own":
                attention = decoder.layers[index + 1].self_attn
                x = decoder.layers[index + 1].input_layernorm(hidden)
                cos, sin = decoder.rotary_emb(hidden, positions.unsqueeze(0))
            else:
                attention = layer.self_attn
                x, (cos, sin) = previous_input
            head = attention.head_dim
            q = attention.q_proj(x).view(1, x.shape[1], -1, head).transpose(1, 2)
            k = attention.k_proj(x).view(1, x.shape[1], -1, head).transpose(1, 2)
            rotate = lambda t: torch.cat((-t[..., head // 2:], t[..., :head // 2]), -1)  # noqa: E731
            q = q * cos.unsqueeze(1) + rotate(q) * sin.unsqueeze(1)
            k = (k * cos.unsqueeze(1) + rotate(k) * sin.unsqueeze(1)).repeat_interleave(q.shape[1] // k.shape[1], 1)
            last = int((columns < prompt_len).sum()) - 1  # the last instruction token, in current columns
            logits = (q[0, :, last:last + 1] @ k[0].transpose(-1, -2)).float() / math.sqrt(head)  # (H, 1, L)
            logits[..., last + 1:] = float("-inf")  # causal
            scores = torch.softmax(logits, -1).mean(0)[0]  # (current columns,)
            is_image = image[columns]
            keep = max(1, rounding(n * ratio ** (stage + 1)))
            chosen = torch.nonzero(is_image).squeeze(1)[scores[is_image].topk(keep).indices].sort().values
            stay = ~is_image
            stay[chosen] = True
            hidden, columns = hidden[:, stay], columns[stay]
            positions = torch.arange(columns.numel()) if renumber else columns.clone()
            kept_per_stage.append(columns[image[columns]].tolist())
        logits = model.lm_head(decoder.norm(hidden))[0, -1]
    return kept_per_stage, logits


def _stage_columns(model) -> list[list[int]]:
    """The original image columns vtr kept after each stage of the last call (row 0)."""
    run = model._vtr_state.pipeline.in_llm.run
    image = run.roles.group[0] >= 0
    out = []
    for layer in sorted(run.kept):
        kept = run.kept[layer]
        cols = kept.index[0][kept.valid[0]]
        out.append([c for c in cols.tolist() if c < image.numel() and bool(image[c])])
    return out


VARIANTS = {
    "reference": dict(),
    "previous_layer": dict(score_layer="previous"),
    "original_positions": dict(renumber=False),
    "fastv_convention": dict(score_layer="previous", renumber=False, rounding="round"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_stage_sets_counts_and_logits_follow_the_reference_loop(tiny, variant, ratio):
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    options = VARIANTS[variant]
    hidden = _layer_input(model, inputs)
    image = inputs["input_ids"][0] == model.config.image_token_id
    rounding = round if options.get("rounding") == "round" else math.floor
    expected, expected_logits = _reference_pdrop(
        model, hidden, image, hidden.shape[1], (1, 2, 3), ratio, options.get("score_layer", "own"),
        options.get("renumber", True), rounding)
    vtr.wrap(model, "pdrop", ratio=ratio, **options)
    with torch.no_grad():
        out = model(**inputs)
    got = _stage_columns(model)
    assert [len(s) for s in got] == [len(s) for s in expected] == [max(1, rounding(64 * ratio ** (s + 1)))
                                                                    for s in range(3)]
    assert got == expected
    torch.testing.assert_close(out.logits[0, -1], expected_logits, rtol=1e-5, atol=1e-5)


def test_the_default_is_the_reference_and_differs_from_the_fastv_convention(tiny):
    """Scoring layer, positions and rounding all matter: the default's stage sets are the reference's,
    and vtr's earlier rule (layer K-1's attention, original positions, rounding) picks other tokens."""
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    assert (PDrop().score_layer, PDrop().renumber, PDrop().rounding) == ("own", True, "floor")
    sets = {}
    for variant in ("reference", "fastv_convention"):
        vtr.wrap(model, "pdrop", ratio=0.3, **VARIANTS[variant])
        with torch.no_grad():
            model(**inputs)
        sets[variant] = _stage_columns(model)
    assert [len(s) for s in sets["reference"]] == [19, 5, 1]  # int(64 * 0.3 ** k)
    assert [len(s) for s in sets["fastv_convention"]] == [19, 6, 2]  # round(...)
    assert sets["reference"][0] != sets["fastv_convention"][0]


def test_decoding_continues_from_the_renumbered_positions(tiny):
    """Greedy generate (cached) equals the reference loop recomputed over the prompt plus the tokens so
    far, whose positions follow the renumbered prompt."""
    model, processor = tiny("llava")
    inputs = make_inputs(processor, "llava")
    image = inputs["input_ids"][0] == model.config.image_token_id
    greedy = greedy_without_placeholders(model, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    vtr.wrap(model, "pdrop")
    out = model.generate(**inputs, **greedy)
    new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    vtr.unwrap(model)
    hidden = _layer_input(model, inputs)
    prompt_len = hidden.shape[1]
    embed = model.get_input_embeddings()
    for step, token in enumerate(new):
        extended = torch.cat([image, torch.zeros(step, dtype=torch.bool)])
        _, logits = _reference_pdrop(model, hidden, extended, prompt_len, (1, 2, 3), 0.5)
        suppressed = logits.clone()
        suppressed[greedy["suppress_tokens"]] = float("-inf")
        assert int(suppressed.argmax()) == token, step
        with torch.no_grad():
            hidden = torch.cat([hidden, embed(torch.tensor([[token]]))], 1)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("variant", ["reference", "fastv_convention"])
def test_kept_variants_keep_the_exactness_invariants(tiny, name, variant):
    """Cached generate == uncached recompute, and a padded batch == its rows alone, for the default and
    for vtr's own variant (the renumbered default is also covered by tests/llm/test_pruner.py)."""
    model, processor = tiny(name)
    inputs = padded_inputs(processor, name)
    vtr.wrap(model, "pdrop", **VARIANTS[variant])
    greedy = greedy_without_placeholders(model)
    cached = model.generate(**inputs, **greedy)
    uncached = model.generate(**inputs, **greedy, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    new = cached.sequences[:, inputs["input_ids"].shape[1]:]
    for i in range(2):
        alone = model.generate(**row_alone(inputs, i), **greedy)
        assert torch.equal(alone.sequences[0, -new.shape[1]:], new[i])
        for step_batch, step_alone in zip(cached.scores, alone.scores):
            assert torch.allclose(step_batch[i], step_alone[0], atol=1e-5)


def test_renumbering_refuses_ppe_positions(tiny):
    model, _ = tiny("llava")
    with pytest.raises(ValueError, match="pass renumber=False"):
        vtr.wrap(model, ["pool", "pdrop"], budget=0.5, positions="ppe")
    vtr.wrap(model, ["pool", "pdrop"], budget=0.5, positions="ppe", renumber=False)


# ---------------------------------------------------------------- the equivalent-token budget
def _average(n: int, counts: tuple[int, ...], layers: tuple[int, ...], num_layers: int) -> float:
    spans = [b - a for a, b in zip(layers, (*layers[1:], num_layers))]
    return (layers[0] * n + sum(s * c for s, c in zip(spans, counts))) / num_layers


def _reachable(n: int, layers: tuple[int, ...], num_layers: int) -> set[int]:
    """Every sum(span * count) of whole, non-increasing counts in [1, n], exhaustively (one bitset of sums
    per last count: a stage may take any count up to the previous stage's)."""
    spans = [b - a for a, b in zip(layers, (*layers[1:], num_layers))]
    by_last = {c: 1 << (spans[0] * c) for c in range(1, n + 1)}
    for span in spans[1:]:
        below, extended = 0, {}
        for c in range(n, 0, -1):
            below |= by_last[c]  # every schedule whose previous count is >= c
            extended[c] = below << (span * c)
        by_last = extended
    bits = 0
    for sums in by_last.values():
        bits |= sums
    return {i for i in range(bits.bit_length()) if bits >> i & 1}


CASES = [  # (tokens, budget, layers, decoder layers)
    (24, 7, (1, 2, 3), 4),  # tiny Qwen2.5-VL
    (32, 9, (1, 2, 3), 4),  # the 32-token video: [32, 2, 1, 1], not [32, 4, 1, 1]
    (64, 20, (1, 2, 3), 4),
    (40, 13, (1, 3), 5),
    (576, 64, (2, 8, 16), 32),
    (576, 192, (8, 16, 24), 32),
    (576, 190, (5, 13, 23), 32),  # uneven spans: 8, 10, 9
    (100, 33, (2, 5), 12),  # spans 3 and 7
]


@pytest.mark.parametrize("n, budget, layers, num_layers", CASES)
def test_the_budget_is_met_exactly_where_whole_counts_can(n, budget, layers, num_layers):
    counts = count_schedule(n, budget, layers, num_layers)
    assert list(counts) == sorted(counts, reverse=True) and 1 <= counts[-1] and counts[0] <= n
    sums = _reachable(n, layers, num_layers)
    exact = budget * num_layers - layers[0] * n
    best = max(s for s in sums if s <= exact)  # exact when reachable, else the closest from below
    assert _average(n, counts, layers, num_layers) == (layers[0] * n + best) / num_layers
    if exact in sums:
        assert _average(n, counts, layers, num_layers) == budget


def test_the_two_reported_schedules():
    assert count_schedule(32, 9, (1, 2, 3), 4) == (2, 1, 1)
    with pytest.raises(ValueError, match="at least 6.75 per layer"):
        count_schedule(24, 6, (1, 2, 3), 4)  # was (1, 1, 1), average 6.75


@pytest.mark.parametrize("n, layers, num_layers, budget, expected", [
    (12, (2, 5), 12, 3, (1, 1)),  # 3 c1 + 7 c2 = 12 has no solution; 10 is the closest from below
    (12, (2, 5), 12, 4, (3, 2)),  # 24 has none; 23 = 3 * 3 + 7 * 2
    (30, (2, 9), 16, 6, None),
])
def test_closest_from_below_when_whole_counts_cannot_hit_the_budget(n, layers, num_layers, budget, expected):
    sums = _reachable(n, layers, num_layers)
    exact = budget * num_layers - layers[0] * n
    assert exact not in sums and exact > min(sums)
    counts = count_schedule(n, budget, layers, num_layers)
    assert num_layers * _average(n, counts, layers, num_layers) - layers[0] * n == max(s for s in sums if s <= exact)
    if expected is not None:
        assert counts == expected


@pytest.mark.parametrize("budget, expected", [(12, None), (13, (48, 48, 2, 1, 1))])
def test_budget_end_to_end_on_tiny_qwen(tiny, budget, expected):
    """48 image tokens, 4 decoder layers, stages at 1/2/3: 12 is below the least average (48 + 3) / 4."""
    model, processor = tiny("qwen2_5_vl")
    inputs = make_inputs(processor, "qwen2_5_vl")
    vtr.wrap(model, "pdrop", budget=budget)
    if expected is None:
        with pytest.raises(UnreachableBudgetError, match="cannot average 12 visual tokens per layer.*at least 12.75"):
            model.generate(**inputs, max_new_tokens=1)
        return
    model.generate(**inputs, max_new_tokens=1)
    (sample,) = vtr.stats(model).samples
    assert (sample.visual_after, *sample.visual_per_layer) == expected
    assert sum(sample.visual_per_layer) / len(sample.visual_per_layer) == budget
