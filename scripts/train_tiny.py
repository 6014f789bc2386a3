"""Train the embedded tiny LLaVA (``vtr/assets/tiny_llava_synth``) on the synthetic benchmark, from scratch.

    nice -n 10 python scripts/train_tiny.py --out vtr/assets/tiny_llava_synth

A ~1M-parameter ``LlavaForConditionalGeneration`` (4-layer CLIP at 112 px with 8 px patches -> 196
visual tokens, 4-layer Llama of width 128, word-level tokenizer) learns the questions of
``vtr.eval.synthetic`` on CPU. Each training sequence is one image followed by several question/answer
turns, so one pass of the vision encoder supervises several answers; the language loss covers the
answers and their end-of-sequence token only. A dense auxiliary loss (a linear head, used in training
only and not saved) asks every projected visual token for the colour and the shape of the object that
covers its patch (``synthetic.object_mask``): without it the encoder, trained from scratch, takes many
times longer to start seeing, and it keeps what a token knows local to its patch. Three heads of decoder layers
0 and 1 are supervised to attend from each answer position to the question's key words and to the named
objects (``attention_loss``), and on left/right turns a linear probe reads both named objects' columns
from the answer position after layer 1 (``ColumnProbe``): without it the heads looked at the right
objects but passed on nothing about where they were, and left/right stayed at chance. The first turn is exactly the prompt the benchmark asks with
(``USER: <image>\\n{question} ASSISTANT:``). Runs are deterministic for a given seed and thread count:
data come from the generator's seeds, and torch runs deterministic algorithms.

The model is evaluated on the validation split during training (greedy first token, as the benchmark
scores) and the final weights, config, tokenizer and processor are written with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,  # noqa: E402
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

from vtr.eval import synthetic  # noqa: E402
from vtr.testing import CHAT_TEMPLATE_LLAVA  # noqa: E402

PATCH = 8
GRID = synthetic.IMAGE_SIZE // PATCH  # 14 x 14 patches
MIN_COVER = PATCH * PATCH // 4  # object pixels for a patch to count as showing the object
# what a question is about and what it asks for (attention_loss)
KEY_WORDS = [*synthetic.COLORS, *synthetic.SHAPES, "color", "shape", "many", "there", "left"]
CHAT_WORDS = ["USER", "ASSISTANT", ":"]
HEADS = 3  # supervised heads per hop (attention_loss): everything the turn needs, its first and second object


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: one token per word of the benchmark, so an answer is exactly one token."""
    tokens = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>", *CHAT_WORDS, *synthetic.vocabulary()]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="[PAD]", unk_token="[UNK]", additional_special_tokens=["<image>"],
                                        padding_side="left")  # an init argument, so that save_pretrained keeps it
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    size = synthetic.IMAGE_SIZE
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE_LLAVA)


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlavaForConditionalGeneration:
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              image_size=synthetic.IMAGE_SIZE, patch_size=PATCH, projection_dim=64)
    text = LlamaConfig(vocab_size=64 * math.ceil(len(tokenizer) / 64), hidden_size=64, intermediate_size=192,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, tie_word_embeddings=True, **ids)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(
        "<image>"), image_seq_length=GRID**2, vision_feature_layer=-1, vision_feature_select_strategy="default", **ids)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def prompt(question: str) -> str:
    """The benchmark's prompt: what the chat template makes of one image and the question."""
    return f"USER: <image>\n{question} ASSISTANT:"


def patch_cover(scene: synthetic.Scene) -> torch.Tensor:
    """(GRID * GRID, objects): pixels of each object in each patch, patches in row-major order."""
    mask = torch.from_numpy(synthetic.object_mask(scene).astype("int64"))
    patches = mask.reshape(GRID, PATCH, GRID, PATCH).permute(0, 2, 1, 3).reshape(GRID * GRID, PATCH * PATCH)
    return torch.nn.functional.one_hot(patches, len(scene.objects) + 1).sum(1)[:, 1:]


def patch_targets(cover: torch.Tensor, scene: synthetic.Scene) -> torch.Tensor:
    """(GRID * GRID, 3): per patch, 1 + the colour index of the object covering at least ``MIN_COVER`` of
    its pixels (the most covering one; 0 on the background), that object's shape index (-100, ignored, on
    the background) and the patch's column (what left/right questions compare)."""
    best = cover.argmax(1)
    shown = cover.gather(1, best[:, None])[:, 0] >= MIN_COVER
    colors = torch.tensor([1 + list(synthetic.COLORS).index(o.color) for o in scene.objects])
    shapes = torch.tensor([synthetic.SHAPES.index(o.shape) for o in scene.objects])
    columns = torch.arange(GRID * GRID) % GRID
    return torch.stack([torch.where(shown, colors[best], 0), torch.where(shown, shapes[best], -100), columns], dim=1)


def evidence_patches(cover: torch.Tensor, turns: list[synthetic.Question], questions: int) -> torch.Tensor:
    """(questions, HEADS, GRID * GRID) bool, per turn: the patches of all its evidence objects (for head 0),
    of the first object it names (head 1) and of the second one (head 2; only position questions name
    two); a count question names none, and an absent colour and turns past the last have no evidence."""
    out = torch.zeros(questions, HEADS, cover.shape[0], dtype=torch.bool)
    for t, turn in enumerate(turns):
        shown = [cover[:, obj] >= MIN_COVER for obj in turn.evidence]
        for patches in shown:
            out[t, 0] |= patches
        if "many" not in turn.text.split():
            for head, patches in enumerate(shown[:HEADS - 1], start=1):
                out[t, head] = patches
    return out


def training_batch(processor: LlavaProcessor, start: int, size: int, questions: int) -> dict[str, torch.Tensor]:
    """Items ``start .. start + size - 1`` of the train split, right-padded (so every row starts at
    position 0, as an unpadded prompt does), labels on the answers and their ``</s>``, the dense
    per-patch targets (``patch_targets``) and each turn's evidence patches (``evidence_patches``)."""
    images, texts, targets, evidence, columns = [], [], [], [], []
    for index in range(start, start + size):
        scene, turns = synthetic.training_item(index, questions)
        images.append(synthetic.render(scene))
        columns.append(named_columns(scene, turns, questions))
        cover = patch_cover(scene)
        targets.append(patch_targets(cover, scene))
        evidence.append(evidence_patches(cover, turns, questions))
        parts = [prompt(turns[0].text) + f" {turns[0].answer} </s>"]
        parts += [f"USER: {turn.text} ASSISTANT: {turn.answer} </s>" for turn in turns[1:]]
        texts.append(" ".join(parts))
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="right")
    ids = batch["input_ids"]
    tokenizer = processor.tokenizer
    colon, eos = tokenizer.convert_tokens_to_ids(":"), tokenizer.eos_token_id
    assistant = tokenizer.convert_tokens_to_ids("ASSISTANT")
    after_prompt = torch.zeros_like(ids, dtype=torch.bool)  # the token right after "ASSISTANT :" is an answer
    after_prompt[:, 2:] = (ids[:, :-2] == assistant) & (ids[:, 1:-1] == colon)
    labels = torch.where(after_prompt | (ids == eos), ids, torch.full_like(ids, -100))
    query = torch.full((size, questions), -1)  # the ":" before each answer, -1 past a row's last turn
    keys = torch.zeros(size, questions, HEADS, ids.shape[1], dtype=torch.bool)
    key_ids = torch.tensor(tokenizer.convert_tokens_to_ids(KEY_WORDS))
    attribute_ids = torch.tensor(tokenizer.convert_tokens_to_ids([*synthetic.COLORS, *synthetic.SHAPES]))
    starts_all = ids == tokenizer.convert_tokens_to_ids("USER")
    span = torch.arange(ids.shape[1])
    for row in range(size):
        answers = after_prompt[row].nonzero()[:, 0]
        query[row, :len(answers)] = answers - 1
        for turn, (start, answer) in enumerate(zip(starts_all[row].nonzero()[:, 0], answers)):
            inside = (span > start) & (span < answer)
            keys[row, turn, 0] = inside & torch.isin(ids[row], key_ids)
            attributes = (inside & torch.isin(ids[row], attribute_ids)).nonzero()[:, 0]
            keys[row, turn, torch.arange(1, 1 + len(attributes[:HEADS - 1])), attributes[:HEADS - 1]] = True
    image_positions = (ids == processor.image_token_id).nonzero()[:, 1].reshape(size, -1)
    patches = torch.zeros(size, questions, HEADS, ids.shape[1], dtype=torch.bool)
    patches.scatter_(3, image_positions[:, None, None, :].expand(-1, questions, HEADS, -1), torch.stack(evidence))
    return {**batch, "labels": labels, "patch_targets": torch.stack(targets), "query_positions": query,
            "key_words": keys, "evidence": patches, "named_columns": torch.stack(columns)}


def named_columns(scene: synthetic.Scene, turns: list[synthetic.Question], questions: int) -> torch.Tensor:
    """(questions, 2): per left/right turn, the patch columns of the centres of the object named first and
    of the one named second (``-100``, ignored, for every other turn)."""
    out = torch.full((questions, 2), -100)
    for t, turn in enumerate(turns):
        if turn.answer in ("left", "right"):
            out[t] = torch.tensor([int(scene.objects[obj].center_x // PATCH) for obj in turn.evidence[:2]])
    return out


class ColumnProbe(torch.nn.Module):
    """The auxiliary head of left/right turns: from the state of each turn's query position after decoder
    layer 1 (where the supervised heads have gathered the two named objects), the columns of both
    objects. Attending to the right patches is not enough (the answer position carried neither object's
    column, probe R^2 <= 0.13, and left/right stayed at chance); this asks the heads' outputs to carry
    the column, which the later layers compare."""

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.head = torch.nn.Linear(model.config.text_config.hidden_size, 2 * GRID)

    def loss(self, hidden: torch.Tensor, query: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0])[:, None]
        states = hidden[rows, query.clamp(min=0)]  # (rows, turns, width)
        logits = self.head(states).view(*query.shape, 2, GRID)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=-100)


def attention_loss(attention: torch.Tensor, query: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass the first heads of one decoder layer (``attention``: its (rows, heads, L, L)
    weights) put, from each turn's ``query`` position (rows, turns; -1 = no turn), on that turn's
    ``targets`` (rows, turns, HEADS, L) bool, one target per head; empty targets do not count.

    Without this the decoder, trained from scratch, takes thousands of steps to discover which of ~250
    tokens matter: under uniform attention each relevant token gets 1/250 of the gradient. Supervising
    three heads per hop breaks that symmetry (layer 0: the question's key words, its first and its second
    attribute word; layer 1: the evidence patches, those of the object named first and those of the one
    named second). A left/right answer compares the columns of the two named objects: with only the
    first one isolated (and the second blended into the all-evidence head) the model stayed at chance on
    position questions; one head per object gives the next layers both columns side by side. The other
    head stays free, and the architecture is unchanged."""
    heads, length = targets.shape[2], attention.shape[-1]
    per_head = attention[:, :heads].transpose(1, 2)  # (rows, L, heads, L)
    picked = per_head.gather(1, query.clamp(min=0)[:, :, None, None].expand(-1, -1, heads, length))
    mass = (picked * targets).sum(-1)
    valid = (query >= 0)[..., None] & targets.any(-1)
    return -(mass[valid] + 1e-6).log().mean()


class PatchProbe(torch.nn.Module):
    """The auxiliary head: colour, shape and column logits from each projected visual token (captured by a
    hook), so that what a question needs is linearly readable from the token of every patch."""

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        super().__init__()
        width = model.config.text_config.hidden_size
        self.sizes = (1 + len(synthetic.COLORS), len(synthetic.SHAPES), GRID)
        self.head = torch.nn.Linear(width, sum(self.sizes))
        self.features: torch.Tensor | None = None
        model.model.multi_modal_projector.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self.features = output

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features.reshape(*targets.shape[:2], -1)).split(self.sizes, dim=-1)
        return sum(torch.nn.functional.cross_entropy(part.flatten(0, 1), targets[..., i].flatten())
                   for i, part in enumerate(logits))


@torch.no_grad()
def evaluate(model, processor, split: str, count: int, batch_size: int = 100) -> dict[str, float]:
    """Greedy first-token accuracy per question type (the benchmark scores the first word)."""
    model.eval()
    correct: dict[str, list[float]] = {}
    for start in range(0, count, batch_size):
        items = synthetic.samples(split, min(batch_size, count - start), start)
        inputs = processor(images=[s.image() for s in items], text=[prompt(s.question) for s in items],
                           return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        answers = processor.tokenizer.batch_decode(out[:, -1:])
        for item, answer in zip(items, answers):
            correct.setdefault(item.question_type, []).append(float(answer.strip() == item.answer))
    model.train()
    scores = {kind: sum(v) / len(v) for kind, v in correct.items()}
    scores["all"] = sum(sum(v) for v in correct.values()) / count
    return scores


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for save_pretrained")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--questions", type=int, default=5, help="question/answer turns per training image")
    parser.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-patch colour/shape loss")
    parser.add_argument("--column-weight", type=float, default=0.3,
                        help="weight of the left/right turns' column probe (ColumnProbe); at 1.0 it crowds out colour/shape")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-samples", type=int, default=200)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, args.seed).train()
    model.set_attn_implementation("eager")  # attention weights for attention_loss; saved as sdpa below
    probe = PatchProbe(model)
    columns = ColumnProbe(model)
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params / 1e6:.2f}M", flush=True)
    named = [*model.named_parameters(), *probe.named_parameters(), *columns.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98))
    history, started = [], time.monotonic()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        batch = training_batch(processor, step * args.batch_size, args.batch_size, args.questions)
        extra = {key: batch.pop(key) for key in ("patch_targets", "query_positions", "key_words", "evidence",
                                                 "named_columns")}
        out = model(**batch, output_attentions=True, output_hidden_states=True)
        language = out.loss
        patches = probe.loss(extra["patch_targets"])
        query = extra["query_positions"]
        looking = (attention_loss(out.attentions[0], query, extra["key_words"])
                   + attention_loss(out.attentions[1], query, extra["evidence"]))
        placed = columns.loss(out.hidden_states[2], query, extra["named_columns"])
        optimizer.zero_grad(set_to_none=True)
        (language + args.aux_weight * (patches + looking) + args.column_weight * placed).backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        if step % 25 == 0:
            print(f"step {step} loss {language.item():.4f} patch loss {patches.item():.4f} "
                  f"attention loss {looking.item():.4f} column loss {placed.item():.4f} "
                  f"elapsed {time.monotonic() - started:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            scores = evaluate(model, processor, "val", args.val_samples)
            history.append({"step": step + 1, "elapsed_s": round(time.monotonic() - started), **scores})
            print("val", json.dumps(history[-1]), flush=True)
    model.eval()
    model.set_attn_implementation("sdpa")
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "parameters": params, "history": history}, indent=1) + "\n")
    print(f"saved to {args.out} after {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
