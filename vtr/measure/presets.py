"""Real checkpoints' published dimensions with random weights, built offline on the target device.

Timings on a random-weight model of the real size are honest timings: the arithmetic and memory traffic
do not depend on the weights' values. Each preset builds the model from config objects directly on the
device in the requested dtype (construction under ``torch.device(device)``, so a 7B model never passes
through CPU RAM), and an offline processor with the checkpoint's real image/video preprocessing and the
built-in tiny tokenizer (its special-token ids are written into the config; the embedding keeps the
real vocabulary size). ``layers`` / ``vision_layers`` truncate depth for CPU runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vtr import testing

CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                         image_size=384, patch_size=14, vision_use_head=False, hidden_act="gelu_pytorch_tanh")
LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                 rms_norm_eps=1e-5)
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=32768)
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
OV_PINPOINTS = [[384 * w, 384 * h] for h in range(1, 7) for w in range(1, 7)]  # anyres_max_9 grid


@dataclass(frozen=True)
class Preset:
    """One real checkpoint's architecture and the input a benchmark feeds it."""

    name: str
    checkpoint: str  # the Hugging Face id whose config this copies
    build: Callable[[], tuple[Any, Any]]  # () -> (config, processor)
    modality: str  # "image" or "video"
    image_size: tuple[int, int] = (336, 336)  # (width, height) of the synthetic image
    frames: int = 0  # synthetic video frames

    def inputs(self, processor, frames: int | None = None, question: str = "describe the picture .") -> dict:
        """Processor outputs for one synthetic image or video of the preset's real resolution."""
        if self.modality == "video":
            video = testing.random_video(frames or self.frames, *self.image_size)
            return processor(videos=[video], text=[testing.prompt(processor, question, images=0, videos=1)],
                             return_tensors="pt")
        image = testing.random_image(*self.image_size)
        return processor(images=[image], text=[testing.prompt(processor, question)], return_tensors="pt")


def _llava_ids() -> dict:
    return dict(image_token_id=testing.token_id("<image>"), **testing.special_ids())


def _clip_processor_kwargs() -> dict:
    return dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def _llava_15_7b():
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaProcessor
    config = LlavaConfig(vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LLAMA2_7B, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu", **_llava_ids())
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(**_clip_processor_kwargs()),
                               tokenizer=testing.tokenizer(), patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=testing.CHAT_TEMPLATE_LLAVA)
    return config, processor


def _llava_next_7b():
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**CLIP_L_336), text_config=LLAMA2_7B,
                             image_grid_pinpoints=NEXT_PINPOINTS, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", **_llava_ids())
    image_processor = LlavaNextImageProcessorPil(**_clip_processor_kwargs(), image_grid_pinpoints=NEXT_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=testing.tokenizer(), patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=testing.CHAT_TEMPLATE_LLAVA)
    return config, processor


def _llava_onevision_7b():
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor,
                              SiglipVisionConfig)
    config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**SIGLIP_SO400M_384),
                                  text_config=dict(model_type="qwen2", vocab_size=152128, rope_theta=1e6, **QWEN2_7B),
                                  image_grid_pinpoints=OV_PINPOINTS, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  video_token_id=testing.token_id("<video>"), **_llava_ids())
    size = {"height": 384, "width": 384}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=OV_PINPOINTS),
        video_processor=testing.make_video_processor("LlavaOnevisionVideoProcessor", size=size),
        tokenizer=testing.tokenizer(), num_image_tokens=729, vision_feature_select_strategy="full",
        chat_template=testing.CHAT_TEMPLATE_LLAVA)
    return config, processor


def _qwen_processor(processor_cls, patch: int):
    from transformers import Qwen2VLImageProcessorPil
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    video_cls = "Qwen3VLVideoProcessor" if "Qwen3" in processor_cls.__name__ else "Qwen2VLVideoProcessor"
    return processor_cls(
        image_processor=Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2, size=pixels),
        video_processor=testing.make_video_processor(video_cls, patch_size=patch, merge_size=2, temporal_patch_size=2,
                                                size=pixels, do_sample_frames=False),
        tokenizer=testing.tokenizer(), chat_template=testing.CHAT_TEMPLATE_QWEN)


def _qwen2_5_vl_7b():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
    text = dict(vocab_size=152064, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                    "mrope_section": [16, 24, 24]}, **QWEN2_7B)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **testing.qwen_ids())
    return config, _qwen_processor(Qwen2_5_VLProcessor, 14)


# Qwen3-VL's SigLIP-2-derived ViT, shared by Qwen3-VL and Qwen3.5/3.6 (which has no deepstack taps)
QWEN3_VIT = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16, spatial_merge_size=2,
                 temporal_patch_size=2, num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh")
QWEN3_VL_ROPE = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
QWEN3_5_ROPE = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [11, 11, 10], "mrope_interleaved": True,
                "partial_rotary_factor": 0.25}


def _qwen3_vl_8b():
    from transformers import Qwen3VLConfig, Qwen3VLProcessor
    vision = dict(QWEN3_VIT, out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24])
    text = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                rope_parameters=QWEN3_VL_ROPE)
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **testing.qwen_ids())
    return config, _qwen_processor(Qwen3VLProcessor, 16)


# The MoE presets copy their checkpoints' config.json (text_config / vision_config values; token ids are the
# offline tokenizer's), as printed in public model-inspection reports; tests/measure/test_presets.py has the totals.
def _qwen3_vl_30b_a3b():
    """Qwen/Qwen3-VL-30B-A3B-Instruct: 48 MoE layers, 128 experts of width 768, 8 routed per token, no shared expert."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLProcessor
    vision = dict(QWEN3_VIT, out_hidden_size=2048, deepstack_visual_indexes=[8, 16, 24])
    text = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                max_position_embeddings=262144, rope_parameters=QWEN3_VL_ROPE)
    config = Qwen3VLMoeConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **testing.qwen_ids())
    return config, _qwen_processor(Qwen3VLProcessor, 16)


def _qwen3_5_27b():
    """Qwen/Qwen3.5-27B (Qwen3.6-27B shares it): 16 x (3 GatedDeltaNet + 1 gated attention) layers."""
    from transformers import Qwen3_5Config, Qwen3VLProcessor
    text = dict(hidden_size=5120, intermediate_size=17408, num_hidden_layers=64, num_attention_heads=24,
                num_key_value_heads=4, head_dim=256, vocab_size=248320, max_position_embeddings=262144,
                linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                linear_num_key_heads=16, linear_num_value_heads=48, full_attention_interval=4,
                rope_parameters=QWEN3_5_ROPE)
    config = Qwen3_5Config(vision_config=dict(QWEN3_VIT, out_hidden_size=5120), text_config=text,
                           tie_word_embeddings=False, **testing.qwen_ids())
    return config, _qwen_processor(Qwen3VLProcessor, 16)


def _qwen3_5_35b_a3b():
    """Qwen/Qwen3.5-35B-A3B (Qwen3.6-35B-A3B shares it): 10 x (3 GatedDeltaNet + 1 gated attention) MoE layers,
    256 experts of width 512, 8 routed per token plus one shared expert of width 512."""
    from transformers import Qwen3_5MoeConfig, Qwen3VLProcessor
    text = dict(hidden_size=2048, moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts=256,
                num_experts_per_tok=8, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=2,
                head_dim=256, vocab_size=248320, max_position_embeddings=262144, linear_conv_kernel_dim=4,
                linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                linear_num_value_heads=32, full_attention_interval=4, rope_parameters=QWEN3_5_ROPE)
    config = Qwen3_5MoeConfig(vision_config=dict(QWEN3_VIT, out_hidden_size=2048), text_config=text,
                              tie_word_embeddings=False, **testing.qwen_ids())
    return config, _qwen_processor(Qwen3VLProcessor, 16)


# InternViT-300M-448px-V2.5 (qkv bias, no q/k norm, layer scale) and Qwen3-8B, as OpenGVLab/InternVL3_5-8B-HF
INTERNVIT_300M = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=448, patch_size=14, attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
                      layer_scale_init_value=0.1, use_mean_pooling=True)
QWEN3_8B = dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                max_position_embeddings=40960, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                tie_word_embeddings=False)


def _internvl3_5_8b():
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor, InternVLVisionConfig
    tokenizer = testing.internvl_tokenizer()
    config = InternVLConfig(vision_config=InternVLVisionConfig(**INTERNVIT_300M), text_config=QWEN3_8B,
                            image_token_id=tokenizer.context_image_token_id, image_seq_length=256,
                            downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
                            tie_word_embeddings=False, **testing.special_ids())
    tile = {"height": 448, "width": 448}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(size=tile, crop_to_patches=True, min_patches=1, max_patches=12),
        video_processor=testing.make_video_processor("InternVLVideoProcessor", size=tile), tokenizer=tokenizer,
        image_seq_length=256, chat_template=testing.CHAT_TEMPLATE_INTERNVL)
    return config, processor

# Gemma 3 (google/gemma-3-4b-it, google/gemma-3-12b-it): SigLIP-So400m at 896 pixels, 4x4-pooled into 256 tokens;
# five sliding-window layers (1024) per global one; global rotary linearly scaled by 8 at base 1e6, local at 1e4
SIGLIP_SO400M_896 = dict(SIGLIP_SO400M_384, num_hidden_layers=27, image_size=896)
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}


def _gemma3(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int):
    def build():
        from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor
        tokenizer = testing.gemma3_tokenizer()
        text = dict(model_type="gemma3_text", hidden_size=hidden, intermediate_size=intermediate,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=256,
                    vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=256, max_position_embeddings=131072,
                    rope_parameters=GEMMA3_ROPE, **testing.special_ids())
        config = Gemma3Config(vision_config=SIGLIP_SO400M_896, text_config=text, mm_tokens_per_image=256,
                              boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
                              image_token_index=tokenizer.image_token_id, **testing.special_ids())
        processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 896, "width": 896}),
                                    tokenizer=tokenizer, image_seq_length=256,
                                    chat_template=testing.CHAT_TEMPLATE_GEMMA3)
        return config, processor

    return build


# Gemma 4 E4B (google/gemma-4-E4B-it): a 16-layer, 768-wide native-resolution tower (16-pixel patches pooled 3x3,
# up to 280 tokens per image, 70 per video frame), 42 decoder layers (five sliding-window ones of 512 per global
# one, global heads 512 wide with a quarter of them rotary), per-layer input embeddings of 256, the last 18 layers
# reading their keys and values from earlier layers' caches, and the audio conformer the checkpoint ships
GEMMA4_E4B_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                         num_key_value_heads=12, head_dim=64, patch_size=16, pooling_kernel_size=3,
                         use_clipped_linears=True, standardize=False)
GEMMA4_E4B_TEXT = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=42, num_attention_heads=8,
                       num_key_value_heads=2, head_dim=256, global_head_dim=512, vocab_size=262144,
                       vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256, num_kv_shared_layers=18,
                       sliding_window=512, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 7,
                       final_logit_softcapping=30.0, max_position_embeddings=131072)


def _gemma4_e4b():
    from transformers import (Gemma4AudioFeatureExtractor, Gemma4Config, Gemma4ImageProcessorPil, Gemma4Processor,
                              Gemma4VideoProcessor)
    processor = Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                                image_processor=Gemma4ImageProcessorPil(), video_processor=Gemma4VideoProcessor(),
                                tokenizer=testing.gemma4_tokenizer(), chat_template=testing.CHAT_TEMPLATE_GEMMA4)
    config = Gemma4Config(vision_config=GEMMA4_E4B_VISION, text_config={**GEMMA4_E4B_TEXT, **testing.special_ids()},
                          audio_config={}, **testing.gemma4_token_ids())
    return config, processor


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", _llava_15_7b, "image"),
    Preset("llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", _llava_next_7b, "image", image_size=(672, 672)),
    Preset("llava-onevision-7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf", _llava_onevision_7b, "video",
           image_size=(384, 384), frames=32),
    Preset("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", _qwen2_5_vl_7b, "image", image_size=(448, 448)),
    Preset("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct", _qwen3_vl_8b, "image", image_size=(448, 448)),
    Preset("qwen3-vl-30b-a3b", "Qwen/Qwen3-VL-30B-A3B-Instruct", _qwen3_vl_30b_a3b, "image", image_size=(448, 448)),
    Preset("qwen3.5-27b", "Qwen/Qwen3.5-27B", _qwen3_5_27b, "image", image_size=(448, 448)),
    Preset("qwen3.5-35b-a3b", "Qwen/Qwen3.5-35B-A3B", _qwen3_5_35b_a3b, "image", image_size=(448, 448)),
    Preset("internvl3.5-8b", "OpenGVLab/InternVL3_5-8B-HF", _internvl3_5_8b, "image", image_size=(896, 896)),
    Preset("gemma-3-4b", "google/gemma-3-4b-it", _gemma3(2560, 10240, 34, 8, 4), "image", image_size=(896, 896)),
    Preset("gemma-3-12b", "google/gemma-3-12b-it", _gemma3(3840, 15360, 48, 16, 8), "image", image_size=(896, 896)),
    # 960x672 pixels: 60x42 patches, a 20x14 grid of 280 tokens (the processor's default budget, filled)
    Preset("gemma-4-e4b", "google/gemma-4-E4B-it", _gemma4_e4b, "image", image_size=(960, 672)),
)}


def build_preset(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                 layers: int | None = None, vision_layers: int | None = None, seed: int = 0):
    """``(model, processor, preset)`` with random weights, constructed directly on ``device``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config, processor = preset.build()
    _truncate(config, layers, vision_layers)
    from transformers import AutoModelForImageTextToText
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    model.generation_config.pad_token_id = testing.token_id("[PAD]")
    return model, processor, preset


def _truncate(config, layers: int | None, vision_layers: int | None) -> None:
    """Cut the LLM (and optionally the vision encoder) to fewer layers, keeping every index valid."""
    if layers is not None:
        text = config.get_text_config()
        if getattr(text, "num_kv_shared_layers", 0):  # the last layers share: cutting the depth drops them first
            text.num_kv_shared_layers = max(0, text.num_kv_shared_layers - (text.num_hidden_layers - layers))
        text.num_hidden_layers = layers
        layer_types = getattr(text, "layer_types", None)
        if layer_types is not None:
            text.layer_types = layer_types[:layers]
    if vision_layers is None:
        return
    vision = config.vision_config
    depth_key = "depth" if hasattr(vision, "depth") else "num_hidden_layers"
    setattr(vision, depth_key, vision_layers)
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if getattr(vision, key, None):
            setattr(vision, key, sorted({min(i, vision_layers - 1) for i in getattr(vision, key)}))


PROXY_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
PROXY_VISION = dict(hidden_size=32, intermediate_size=64)
PROXY_LINEAR_ATTENTION = dict(linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                              linear_num_value_heads=4)
PROXY_EXPERTS = dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


def shape_proxy(config):
    """A copy of ``config`` with tiny widths but the same depth and visual geometry.

    Which tokens a method keeps, and how many, depends on the input geometry, the budget and the LLM
    depth, never on widths: the proxy runs a reduction in milliseconds on a CPU, and its token counts
    with the real config give the real model's FLOPs (``call_flops(proxy, inputs, config=real)``).
    The weights are random, so attention-ranked choices differ from a trained model's; the counts do not.
    """
    proxy = copy.deepcopy(config)
    text = proxy.get_text_config()
    # per-layer overrides (Gemma 4's wider global heads) hide the global widths until they are lifted
    overrides = text.to_dict().get("per_layer_config") or {}
    if overrides:
        text.per_layer_config = None
    for key, value in PROXY_TEXT.items():
        setattr(text, key, value)
    if getattr(text, "head_dim", None):
        text.head_dim = PROXY_TEXT["hidden_size"] // PROXY_TEXT["num_attention_heads"]
    if overrides:
        shrunk = {"head_dim": text.head_dim, "num_key_value_heads": 1}
        text.per_layer_config = {layer: {key: shrunk.get(key, value) for key, value in layer_overrides.items()}
                                 for layer, layer_overrides in overrides.items()}
    if getattr(text, "hidden_size_per_layer_input", 0):
        text.hidden_size_per_layer_input = 8
    rope = getattr(text, "rope_parameters", None) or {}
    if "mrope_section" in rope:  # t/h/w sections must fill half the (new) head dim, all of it rotary
        text.rope_parameters = {**rope, "mrope_section": [2, 3, 3],
                                **({"partial_rotary_factor": 1.0} if "partial_rotary_factor" in rope else {})}
    # Qwen3.5's GatedDeltaNet layers; mixtures of experts (which experts a token picks moves no visual token)
    for key, value in {**PROXY_LINEAR_ATTENTION, **PROXY_EXPERTS}.items():
        if hasattr(text, key):
            setattr(text, key, value)
    vision = proxy.vision_config
    for key, value in PROXY_VISION.items():
        setattr(vision, key, value)
    for heads in ("num_attention_heads", "num_heads", "num_key_value_heads"):
        if hasattr(vision, heads):
            setattr(vision, heads, 2)
    if getattr(proxy, "audio_config", None) is not None:  # Gemma 4's audio tower sees no visual token
        proxy.audio_config = None
    if hasattr(vision, "out_hidden_size"):
        vision.out_hidden_size = PROXY_TEXT["hidden_size"]
    if proxy.model_type == "qwen2_vl":  # embed_dim is the ViT width, hidden_size the merger's output
        vision.embed_dim, vision.hidden_size = PROXY_VISION["hidden_size"], PROXY_TEXT["hidden_size"]
    if hasattr(vision, "projection_dim"):
        vision.projection_dim = PROXY_VISION["hidden_size"]
    return proxy
