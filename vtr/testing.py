"""Tiny random models and offline processors for every supported architecture.

Nothing is downloaded: configs are built in code, the tokenizer with the ``tokenizers`` library, image
and video processors from their classes. Used by the test suite and by ``vtr demo``; also handy for
users who want to try a method without a checkpoint. ``build(name)`` returns ``(model, processor)``.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = [
    "<image>", "<video>",  # llava family
    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>",  # qwen
]
WORDS = (
    "what is in the image video describe this picture please answer user assistant system a an of the "
    "yes no red green blue yellow cat dog one two three four five six seven eight nine ten left right"
).split() + ["USER", "ASSISTANT", ":", "?", ".", ",", "\n"] + [f"w{i}" for i in range(200)]
VOCAB_SIZE = 512

CHAT_TEMPLATE_LLAVA = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}<video>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHAT_TEMPLATE_QWEN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ANYRES_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


@functools.lru_cache(maxsize=1)
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the placeholder tokens of both families, left padding."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "<s>", "</s>"] + SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="[PAD]", unk_token="[UNK]",
        additional_special_tokens=SPECIAL_TOKENS,
    )
    tok.padding_side = "left"
    return tok


def token_id(token: str) -> int:
    return tokenizer().convert_tokens_to_ids(token)


def special_ids() -> dict[str, int]:
    return dict(bos_token_id=token_id("<s>"), eos_token_id=token_id("</s>"), pad_token_id=token_id("[PAD]"))


def _text_config(**extra) -> dict:
    return dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                **special_ids(), **extra)


def _clip_config(image_size: int = 32, patch_size: int = 4):
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=image_size, patch_size=patch_size, projection_dim=32)


def _siglip_config():
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=8)


def make_video_processor(cls_name: str, **kwargs):
    """A video processor when torchvision is installed (HF video processors need it), else None."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        _allow_missing_video_processor()
        return None
    import transformers
    return getattr(transformers, cls_name)(**kwargs)


def _allow_missing_video_processor() -> None:
    """transformers 5.x type-checks ``video_processor=None`` against a dummy class without torchvision and
    fails with an AttributeError; skip the check for None so image-only processors can be built."""
    from transformers.processing_utils import ProcessorMixin
    original = ProcessorMixin.check_argument_for_proper_class
    if getattr(original, "_vtr_patched", False):
        return

    def check(self, argument_name, argument):
        return None if argument is None else original(self, argument_name, argument)

    check._vtr_patched = True
    ProcessorMixin.check_argument_for_proper_class = check


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.generation_config.pad_token_id = token_id("[PAD]")
    return model


def build_llava(seed: int = 0):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=_clip_config(), text_config=_text_config(model_type="llama"),
                         image_token_id=token_id("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", **special_ids())
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE_LLAVA)
    return _finish(model), processor


def build_llava_next(seed: int = 0):
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)
    torch.manual_seed(seed)
    config = LlavaNextConfig(vision_config=_clip_config(patch_size=8), text_config=_text_config(model_type="llama"),
                             image_token_id=token_id("<image>"), image_grid_pinpoints=ANYRES_PINPOINTS,
                             vision_feature_layer=-2, **special_ids())
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=ANYRES_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=CHAT_TEMPLATE_LLAVA)
    return _finish(model), processor


def build_llava_onevision(seed: int = 0):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor)
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(vision_config=_siglip_config(), text_config=_text_config(model_type="qwen2"),
                                  image_token_id=token_id("<image>"), video_token_id=token_id("<video>"),
                                  image_grid_pinpoints=ANYRES_PINPOINTS, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", **special_ids())
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                      image_grid_pinpoints=ANYRES_PINPOINTS)
    video_processor = make_video_processor("LlavaOnevisionVideoProcessor", size={"height": 32, "width": 32})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer(),
                                        video_processor=video_processor, num_image_tokens=16,
                                        vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE_LLAVA)
    return _finish(model), processor


def build_llava_next_video(seed: int = 0):
    from transformers import (LlavaNextImageProcessorPil, LlavaNextVideoConfig,
                              LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor)
    torch.manual_seed(seed)
    config = LlavaNextVideoConfig(vision_config=_clip_config(patch_size=8), text_config=_text_config(model_type="llama"),
                                  image_token_id=token_id("<image>"), video_token_id=token_id("<video>"),
                                  image_grid_pinpoints=ANYRES_PINPOINTS, vision_feature_layer=-2,
                                  spatial_pool_stride=2, **special_ids())
    model = LlavaNextVideoForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=ANYRES_PINPOINTS)
    video_processor = make_video_processor("LlavaNextVideoVideoProcessor", size={"shortest_edge": 32},
                                       crop_size={"height": 32, "width": 32})
    processor = LlavaNextVideoProcessor(image_processor=image_processor, tokenizer=tokenizer(),
                                        video_processor=video_processor, patch_size=8,
                                        vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                        chat_template=CHAT_TEMPLATE_LLAVA)
    return _finish(model), processor


QWEN_PATCH, QWEN_MERGE = 4, 2


def qwen_ids() -> dict[str, int]:
    return dict(image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
                vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"))


def _qwen_processor(processor_cls):
    from transformers import Qwen2VLImageProcessorPil
    factor = QWEN_PATCH * QWEN_MERGE
    pixels = {"shortest_edge": 4 * factor * factor, "longest_edge": 64 * factor * factor}
    image_processor = Qwen2VLImageProcessorPil(patch_size=QWEN_PATCH, merge_size=QWEN_MERGE, temporal_patch_size=2,
                                               size=pixels)
    video_cls = "Qwen3VLVideoProcessor" if "Qwen3" in processor_cls.__name__ else "Qwen2VLVideoProcessor"
    video_processor = make_video_processor(video_cls, patch_size=QWEN_PATCH, merge_size=QWEN_MERGE,
                                       temporal_patch_size=2, size=pixels, do_sample_frames=False,
                                       cap_pixels_per_frame=True)
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer(), video_processor=video_processor,
                         chat_template=CHAT_TEMPLATE_QWEN)


def _mrope(**extra) -> dict:
    # mrope_section sums to head_dim / 2 = 8
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra}


def _build_qwen(config_cls, model_cls, processor_cls, seed: int, vision: dict, text: dict, **extra):
    torch.manual_seed(seed)
    config = config_cls(vision_config=vision, text_config=text, **qwen_ids(), **extra)
    return _finish(model_cls(config)), _qwen_processor(processor_cls)


def _qwen_vision(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=QWEN_PATCH,
                spatial_merge_size=QWEN_MERGE, temporal_patch_size=2, **extra)


def build_qwen2_vl(seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=QWEN_PATCH,
                  spatial_merge_size=QWEN_MERGE, temporal_patch_size=2)
    return _build_qwen(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, seed, vision,
                       _text_config(rope_parameters=_mrope()))


def build_qwen2_5_vl(seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    vision = _qwen_vision(depth=2, window_size=16, fullatt_block_indexes=[1])
    return _build_qwen(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, seed, vision,
                       _text_config(rope_parameters=_mrope()))


def build_qwen3_vl(seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    vision = _qwen_vision(depth=3, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    text = _text_config(head_dim=16, rope_parameters=_mrope(mrope_interleaved=True))
    return _build_qwen(Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, seed, vision, text)


# experts as a loop of linears: FlopCounterMode counts nothing for the default kernel (``torch._grouped_mm``)
EAGER_EXPERTS = dict(experts_implementation="eager")


def build_qwen3_vl_moe(seed: int = 0):
    """Qwen3-VL-MoE: Qwen3-VL's ViT and deepstack with a sparse MoE text model (4 tiny experts, top-2)."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor
    vision = _qwen_vision(depth=3, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    text = _text_config(head_dim=16, rope_parameters=_mrope(mrope_interleaved=True), num_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    return _build_qwen(Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor, seed, vision, text,
                       **EAGER_EXPERTS)


# Qwen3.5 / 3.6: a hybrid text model, GatedDeltaNet (linear attention) and gated full attention layers; K=2
# (linear) and K=3 (full) both follow a full-attention layer
QWEN3_5_LAYERS = ["linear_attention", "full_attention", "linear_attention", "full_attention"]


def _qwen3_5_text(**extra) -> dict:
    # partial rotary as the real models (a quarter there; half here so mrope_section [2, 1, 1] fits head_dim 16)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True,
            "partial_rotary_factor": 0.5}
    return _text_config(head_dim=16, rope_parameters=rope, layer_types=QWEN3_5_LAYERS, linear_conv_kernel_dim=4,
                        linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                        linear_num_value_heads=4, **extra)


def build_qwen3_5(seed: int = 0):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor
    vision = _qwen_vision(depth=2, num_position_embeddings=64)
    return _build_qwen(Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor, seed, vision,
                       _qwen3_5_text())


def build_qwen3_5_moe(seed: int = 0):
    """Qwen3.5-MoE: the hybrid stack with a routed MoE (4 tiny experts, top-2) plus a shared expert."""
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, Qwen3VLProcessor
    vision = _qwen_vision(depth=2, num_position_embeddings=64)
    text = _qwen3_5_text(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                         shared_expert_intermediate_size=32)
    return _build_qwen(Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, Qwen3VLProcessor, seed, vision, text,
                       **EAGER_EXPERTS)


# ---------------------------------------------------------------- InternVL (InternViT + pixel shuffle + Qwen2/Qwen3)
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}
INTERNVL_TILE, INTERNVL_PATCH = 32, 4  # 8x8 patches per tile, 4x4 LLM tokens after the 2x2 pixel shuffle
CHAT_TEMPLATE_INTERNVL = CHAT_TEMPLATE_QWEN.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n") \
    .replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")


def _family_tokenizer(tokens: dict[str, str]) -> PreTrainedTokenizerFast:
    """``tokenizer()`` plus a family's special tokens, registered under the attribute names its processor reads."""
    vocab = dict(tokenizer().get_vocab())
    new = [t for t in tokens.values() if t not in vocab]
    vocab.update({t: max(vocab.values()) + 1 + i for i, t in enumerate(new)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(SPECIAL_TOKENS + new)  # extra_special_tokens replaces additional_special_tokens
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="[PAD]",
                                  unk_token="[UNK]", extra_special_tokens=tokens)
    tok.padding_side = "left"
    return tok


@functools.lru_cache(maxsize=1)
def internvl_tokenizer() -> PreTrainedTokenizerFast:
    return _family_tokenizer(INTERNVL_TOKENS)


def internvl_processor(max_tiles: int = 4):
    """InternVL's processor at a 32-pixel tile: dynamic tiling up to ``max_tiles`` crops plus a thumbnail."""
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor
    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    image_processor = GotOcr2ImageProcessorPil(size=tile, crop_to_patches=True, min_patches=1, max_patches=max_tiles)
    video_processor = make_video_processor("InternVLVideoProcessor", size=tile)
    tokens = (INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2
    return InternVLProcessor(image_processor=image_processor, tokenizer=internvl_tokenizer(),
                             video_processor=video_processor, image_seq_length=tokens,
                             chat_template=CHAT_TEMPLATE_INTERNVL)


def _build_internvl(seed: int, text: dict):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig
    torch.manual_seed(seed)
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                  image_size=INTERNVL_TILE, patch_size=INTERNVL_PATCH, use_qk_norm=True)
    tok = internvl_tokenizer()
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2, downsample_ratio=0.5,
                            vision_feature_layer=-1, vision_feature_select_strategy="default", **special_ids())
    return _finish(InternVLForConditionalGeneration(config)), internvl_processor()


def build_internvl(seed: int = 0):
    """InternVL3-style: InternViT (qk-norm, class token) and a Qwen2 text model."""
    return _build_internvl(seed, _text_config(model_type="qwen2"))


def build_internvl_qwen3(seed: int = 0):
    """InternVL3.5-style: the same InternViT and a Qwen3 text model (q/k norm, explicit head_dim)."""
    return _build_internvl(seed, _text_config(model_type="qwen3", head_dim=16))


# ---------------------------------------------------------------- Gemma 3 (SigLIP + 4x4 average pool + Gemma 3 text)
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_POOL = 32, 2, 4  # 16x16 patches pooled 4x4: a 4x4 grid of 16 LLM tokens
GEMMA3_IMAGE_TOKENS = (GEMMA3_IMAGE // GEMMA3_PATCH // GEMMA3_POOL) ** 2
CHAT_TEMPLATE_GEMMA3 = CHAT_TEMPLATE_LLAVA.replace("<image>\n", "<start_of_image>\n")


@functools.lru_cache(maxsize=1)
def gemma3_tokenizer() -> PreTrainedTokenizerFast:
    return _family_tokenizer(GEMMA3_TOKENS)


def gemma3_processor():
    """Gemma 3's processor at a 32-pixel image (pan-and-scan when a call asks, with its crop options)."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor
    image_processor = Gemma3ImageProcessorPil(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE})
    return Gemma3Processor(image_processor=image_processor, tokenizer=gemma3_tokenizer(),
                           image_seq_length=GEMMA3_IMAGE_TOKENS,
                           chat_template=CHAT_TEMPLATE_GEMMA3)


def build_gemma3(seed: int = 0):
    """Gemma 3-style, small: a 2-layer SigLIP tower, a text model of sliding-window layers (window 12, shorter
    than the prompts) interleaved with global ones, four layers so in-LLM methods prune at layers 1 to 3."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=GEMMA3_IMAGE, patch_size=GEMMA3_PATCH, vision_use_head=False)
    text = dict(model_type="gemma3_text", vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                query_pre_attn_scalar=16, sliding_window=12, layer_types=["sliding_attention", "full_attention"] * 2,
                max_position_embeddings=1024, **special_ids())
    tok = gemma3_tokenizer()
    config = Gemma3Config(vision_config=vision, text_config=text,
                          mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id, **special_ids())
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers initialises the projection to zeros: images would not reach the LLM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return _finish(model), gemma3_processor()


# ---------------------------------------------------------------- Gemma 4 (native-resolution tower + k x k pool)
# the video token is in the vocabulary, as in the real one: added by the processor, it would get another id
# once the tokenizer is saved and reloaded than the one written into the model's config
GEMMA4_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                 "video_token": "<|video|>", "audio_token": "<|audio|>", "boa_token": "<|audio>",
                 "eoa_token": "<audio|>"}
# 4-pixel patches pooled 2x2, at most 70 tokens per image: 64x48 -> 18x14 patches -> a 7x9 grid of 63 tokens
GEMMA4_PATCH, GEMMA4_POOL, GEMMA4_MAX_TOKENS = 4, 2, 70
# text options of the published Gemma 4 models, at tiny sizes: E2B/E4B/31B's KV-sharing last layers (31B's
# double-wide MLP there, its global layers' keys doubling as values) and 26B-A4B's experts
GEMMA4_KV_SHARING = dict(num_hidden_layers=6, layer_types=["sliding_attention", "full_attention"] * 3,
                         num_kv_shared_layers=2, use_double_wide_mlp=True, attention_k_eq_v=True,
                         num_global_key_value_heads=1)
GEMMA4_EXPERTS = dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16)
CHAT_TEMPLATE_GEMMA4 = CHAT_TEMPLATE_LLAVA.replace("<image>\n", "<|image|>\n").replace("<video>\n", "<|video|>\n")


@functools.lru_cache(maxsize=1)
def gemma4_tokenizer() -> PreTrainedTokenizerFast:
    return _family_tokenizer(GEMMA4_TOKENS)


def gemma4_token_ids() -> dict[str, int]:
    """The special-token ids a Gemma 4 config takes, numbered as the built-in tokenizer numbers them."""
    tok = gemma4_tokenizer()
    return dict(image_token_id=tok.image_token_id, boi_token_id=tok.boi_token_id, eoi_token_id=tok.eoi_token_id,
                video_token_id=tok.video_token_id, audio_token_id=tok.audio_token_id, boa_token_id=tok.boa_token_id,
                eoa_token_index=tok.eoa_token_id, **special_ids())


def gemma4_processor():
    """Gemma 4's processor at a budget of 70 pooled tokens per image (its smallest published one)."""
    from transformers import Gemma4AudioFeatureExtractor, Gemma4ImageProcessorPil, Gemma4Processor
    sizes = dict(patch_size=GEMMA4_PATCH, max_soft_tokens=GEMMA4_MAX_TOKENS, pooling_kernel_size=GEMMA4_POOL)
    return Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                           image_processor=Gemma4ImageProcessorPil(**sizes), tokenizer=gemma4_tokenizer(),
                           video_processor=make_video_processor("Gemma4VideoProcessor", **sizes),
                           image_seq_length=GEMMA4_MAX_TOKENS, chat_template=CHAT_TEMPLATE_GEMMA4)


def build_gemma4(seed: int = 0, **text_options):
    """Gemma 4-style, small: a 2-layer vision tower pooling 2x2, a text model of sliding-window (window 12) and
    global layers with per-layer input embeddings and bidirectional attention over each image. ``text_options``
    override the text config (the published models' KV sharing, keys as values, experts: run as a loop of
    linears, which FlopCounterMode counts)."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, patch_size=GEMMA4_PATCH, pooling_kernel_size=GEMMA4_POOL,
                  position_embedding_size=64)
    text = {**dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=12,
                   layer_types=["sliding_attention", "full_attention"] * 2, use_bidirectional_attention="vision",
                   vocab_size_per_layer_input=VOCAB_SIZE, hidden_size_per_layer_input=8,
                   max_position_embeddings=1024, **special_ids()), **text_options}
    config = Gemma4Config(vision_config=vision, text_config=text, **gemma4_token_ids(),
                          **(EAGER_EXPERTS if text_options.get("enable_moe_block") else {}))
    return _finish(Gemma4ForConditionalGeneration(config)), gemma4_processor()


BUILDERS: dict[str, Callable] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "llava_onevision": build_llava_onevision,
    "llava_next_video": build_llava_next_video,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "qwen3_vl_moe": build_qwen3_vl_moe,
    "qwen3_5": build_qwen3_5,
    "qwen3_5_moe": build_qwen3_5_moe,
    "internvl": build_internvl,
    "internvl_qwen3": build_internvl_qwen3,
    "gemma3": build_gemma3,
    "gemma4": build_gemma4,
}


def build(name: str, seed: int = 0):
    """``(model, processor)`` for one of ``BUILDERS``; the weights are random but seeded."""
    if name not in BUILDERS:
        raise ValueError(f"no tiny builder for {name!r}; available: {', '.join(BUILDERS)}")
    return BUILDERS[name](seed)


def random_image(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def random_video(frames: int = 4, width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)


def prompt(processor, text: str = "what is in the image ?", images: int = 1, videos: int = 0) -> str:
    """A chat-formatted user turn with ``images`` image and ``videos`` video placeholders."""
    content = [{"type": "image"}] * images + [{"type": "video"}] * videos + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
