"""The adapter contract: everything vtr needs to know about one model family.

The generic parts follow what ``generate()`` itself does in transformers 5.x (encode each modality with
``base_model.get_{modality}_features`` and the inputs named in its signature; positions from
``_prepare_position_ids_for_generation``), so a keep-all reduction reproduces the unwrapped model bit
for bit. Subclasses add what differs per family: token grids, the layout of position ids, and extra
per-modality outputs that must be reduced alongside the features.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor
from transformers.utils import ModelOutput

from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest, Reduction, VisionInfo
from vtr.pixels import PixelMap
from vtr.vision.attention import AttentionCapture
from vtr.vision.merging import EncoderMerging, MergeTarget

MODALITIES = ("image", "video")
PIXEL_KEYS = ("pixel_values", "pixel_values_videos", "pixel_values_images")
RECURRENT_LAYER_TYPES = ("linear_attention",)  # ``layer_types`` entries without attention keys


def last_layer_vision_info(config) -> VisionInfo:
    """A tower without a class token whose features are its last layer's output (Gemma 3's SigLIP, after its
    post layer norm; Gemma 4's tower, before its pool)."""
    depth = config.vision_config.num_hidden_layers
    return VisionInfo(depth=depth, feature_layer=depth - 1, has_cls=False, encoder="clip")


class Adapter:
    """Model-family knowledge for one wrapped model instance."""

    model_types: ClassVar[tuple[str, ...]] = ()
    modalities_handled: ClassVar[tuple[str, ...]] = MODALITIES  # what the adapter knows how to lay out
    rope_rows: ClassVar[int] = 1  # position rows the text model's rotary embedding reads (1-D RoPE)
    # the text rotary takes each layer's type (``rotary_emb(x, positions, layer_type)``: Gemma 3 / 4, whose local
    # and global layers rotate with their own bases)
    rotary_per_layer_type: ClassVar[bool] = False
    # the model's videos reach it as frames in image placeholders (InternVL): each frame is reduced as an image
    video_frames_as_images: ClassVar[bool] = False
    # (width, height) of the small noise image `vtr demo` / `bench` / `flops` feed a model: a square the
    # LLaVA processors resize to their tower's; native-resolution families override it
    demo_image_size: ClassVar[tuple[int, int]] = (32, 32)

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = model.config
        # signatures are read once here, not on every call
        self._encoder_params = {
            modality: tuple(p for p in inspect.signature(encoder).parameters if p != "kwargs")
            for modality in self.modalities()
            if (encoder := self._encoder(modality)) is not None
        }

    # ------------------------------------------------------------------ visual inputs
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in self.modalities_handled if m in getattr(self.model, "input_modalities", MODALITIES))

    def placeholder_token_id(self, modality: str) -> int:
        return int(getattr(self.config, f"{modality}_token_id"))

    def _encoder(self, modality: str):
        return getattr(self.model.base_model, f"get_{modality}_features", None)

    def encoder_kwargs(self, modality: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs ``get_{modality}_features`` takes, as generate() collects them."""
        return {key: inputs[key] for key in self._encoder_params.get(modality, ()) if inputs.get(key) is not None}

    def present_modalities(self, inputs: dict[str, Any]) -> tuple[str, ...]:
        """Modalities whose pixels are in ``inputs`` (those vtr has to encode and reduce).

        Pixels of a modality the model takes but this adapter does not lay out (Gemma 4's videos) are refused:
        passing them through unreduced would look like a reduction that did nothing."""
        present = tuple(m for m in self.modalities() if any(k in PIXEL_KEYS for k in self.encoder_kwargs(m, inputs)))
        handled = {key for m in present for key in self.encoder_kwargs(m, inputs)}
        if unhandled := [k for k in PIXEL_KEYS if inputs.get(k) is not None and k not in handled]:
            raise ReductionError(
                f"this call passes {unhandled[0]}, which vtr does not reduce on {self.config.model_type} models (it "
                f"reduces their {' and '.join(self.modalities())} inputs); run it on the unwrapped model "
                f"(vtr.unwrap(model)), or reduce the frames as images")
        return present

    def consumed_keys(self, inputs: dict[str, Any]) -> set[str]:
        """Input keys that only feed the vision encoder; they are not passed on once features exist."""
        return {key for m in self.present_modalities(inputs) for key in self.encoder_kwargs(m, inputs)}

    def encode(self, modality: str, inputs: dict[str, Any]) -> ModelOutput:
        return self._encoder(modality)(**self.encoder_kwargs(modality, inputs), return_dict=True)

    def item_features(self, modality: str, output: ModelOutput) -> list[Tensor]:
        """Per visual input (N_i, D) features, in the order the model scatters them into placeholders."""
        return list(output.pooler_output)

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        """The visual-input description of each item (grids and structural tokens, see ``vtr.layout``)."""
        raise NotImplementedError

    def coarse_item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        """``item_layouts`` without ``Segment.crops``, for a method that does not read them
        (``Method.reads_crop_boxes``): slots, grids and structural tokens exact. Default: the same."""
        return self.item_layouts(modality, inputs, features)

    def with_features(
        self, modality: str, output: ModelOutput, features: list[Tensor], reductions: list[Reduction]
    ) -> ModelOutput:
        """A copy of ``output`` carrying the reduced per-item ``features``.

        ``reductions`` (over each item's content tokens) are for families with other per-token encoder
        outputs that must be reduced the same way (Qwen3-VL's deepstack features).
        """
        reduced = type(output)(**dict(output.items()))
        if isinstance(output.pooler_output, Tensor):  # (videos, tokens, D): the model flattens the first two axes
            reduced.pooler_output = torch.cat(features).unsqueeze(0)
        else:
            reduced.pooler_output = type(output.pooler_output)(features)
        return reduced

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        """Per item: the pictures the processor made and the pixels each content token covers (``vtr.pixels``),
        for ``vtr show``; ``layouts`` are this encode's ``item_layouts``. Default: none known, said per item."""
        reason = (f"no pixel mapping for this family ({self.config.model_type}): {type(self).__name__} does not "
                  f"describe where its {modality} tokens sit in the pixels")
        return [PixelMap.unavailable(reason) for _ in layouts]

    # ------------------------------------------------------------------ the vision encoder
    def vision_info(self) -> VisionInfo:
        """Depth, feature layer and CLS presence of the vision encoder (methods derive defaults from it)."""
        raise ReductionError(
            f"vtr cannot yet map vision-encoder attention to the LLM tokens of {self.config.model_type} models; "
            f"methods that need it (hiprune, visionzip) run on the LLaVA and Qwen-VL families, internvl and gemma3"
        )

    @contextlib.contextmanager
    def capture_attention(self, requests: dict[str, AttentionRequest]) -> Iterator[AttentionCapture]:
        """Keep the inputs of the requested encoder layers' attention during the block."""
        layers = {request.layer for request in requests.values()}
        with AttentionCapture().on({layer: self.vision_attention_module(layer) for layer in layers}) as capture:
            yield capture

    def merge_target(self) -> MergeTarget:
        """The encoder layers a vision-stage method (tome, dymu) merges between; raises where unsupported."""
        raise ReductionError(
            f"vision-encoder merging (tome, dymu) runs on the LLaVA family's CLIP/SigLIP towers (llava, and the "
            f"images of llava_next, llava_onevision, llava_next_video), not on {self.config.model_type}: the Qwen "
            f"ViT's patch merger concatenates each 2x2 block of patches into one LLM token, so tokens merged "
            f"across blocks (and, in Qwen2.5-VL, across attention windows) have no place in its output; use a "
            f"pre-LLM method (divprune, visionzip, hiprune, ...) there"
        )

    @contextlib.contextmanager
    def merging_encode(self, modality: str, merging: EncoderMerging) -> Iterator[None]:
        """Adapt the model's own encode to merged encoder sequences (default: nothing to adapt)."""
        yield

    def spread_merged(self, modality: str, merging: EncoderMerging, features: list[Tensor]) -> list[Tensor]:
        """Per item, every placeholder slot carrying the features of the merged token it belongs to
        (default: one encoder sequence per item, as LLaVA-1.5)."""
        return merging.spread(features)

    def item_merges(self, modality: str, merging: EncoderMerging, features: list[Tensor],
                    layouts: list[ItemLayout]) -> list[tuple[Reduction, tuple[int, ...], int]]:
        """Per item: the merge as a reduction of its content tokens, the tokens each encoder layer processed
        for it, and the feature tokens per encoder sequence the projector saw (default: one sequence per
        item, every slot a content token)."""
        counts, projected = merging.per_layer_counts(), merging.feature_counts()
        return [(r, tuple(c), p) for r, c, p in zip(merging.reductions(features), counts, projected)]

    def vision_attention_module(self, layer: int) -> torch.nn.Module:  # pragma: no cover - per family
        raise NotImplementedError

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per item, per request name: (scores (N,), keys (N, d)) aligned with the item's content tokens."""
        raise NotImplementedError  # pragma: no cover - per family

    # ------------------------------------------------------------------ the LLM
    def decoder(self) -> torch.nn.Module:
        """The text model whose ``layers`` the in-LLM stage hooks."""
        return self.model.model.language_model

    def recurrent_layers(self) -> frozenset[int]:
        """Decoder layers that keep a recurrent state instead of attention keys (the text config's
        ``layer_types``: Qwen3.5's ``linear_attention`` layers); the in-LLM stage scores at the others."""
        types = getattr(self.config.get_text_config(), "layer_types", None) or ()
        return frozenset(i for i, kind in enumerate(types) if kind in RECURRENT_LAYER_TYPES)

    def cache_layers(self) -> tuple[int, ...]:
        """Per decoder layer, the layer whose KV cache it reads (default: its own; Gemma 4's KV-sharing layers
        read the last earlier layer of their kind, and hold no cache of their own)."""
        return ()

    def gated_queries(self) -> bool:
        """Whether the text attention's q projection also carries a per-head output gate (default: no)."""
        return False

    def text_attn_implementation(self) -> str:
        return str(self.config.get_text_config()._attn_implementation)

    def sliding_windows(self) -> tuple[int | None, ...]:
        """Per decoder layer, its sliding attention window (keys less than that many positions back), or
        ``None`` for a global layer: read from the text config's ``layer_types`` and ``sliding_window``, as
        transformers builds each layer's mask and cache from them (Gemma 3 interleaves both kinds)."""
        text = self.config.get_text_config()
        layer_types = getattr(text, "layer_types", None) or ("full_attention",) * text.num_hidden_layers
        window = getattr(text, "sliding_window", None)
        return tuple(int(window) if kind == "sliding_attention" and window else None for kind in layer_types)

    def rotary_kinds(self) -> tuple[str | None, ...]:
        """Per decoder layer, the extra argument the text model passes its rotary module for that layer, or
        ``None`` where it passes none (default: one rotary for every layer; ``rotary_per_layer_type``: the
        layer's type)."""
        return tuple(self.config.get_text_config().layer_types) if self.rotary_per_layer_type else ()

    def check_in_llm(self, method: Any) -> None:
        """Raise ``ReductionError`` if the in-LLM ``method`` cannot run on this family (default: it can)."""

    def patch_decoder(self, pruner: Any) -> Callable[[], None]:
        """Adapt what the text model does between layers to a shorter sequence; returns the undo.

        Default: nothing to adapt (every family whose layers only exchange hidden states).
        """
        return lambda: None

    # ------------------------------------------------------------------ positions
    def positions(self, inputs: dict[str, Any], for_generate: bool) -> Tensor:
        """Original positions of every input column as ``(rows, B, L)``.

        Explicit ``position_ids`` win. Otherwise generate() and forward() each get the positions the
        unwrapped model would compute on that path (they differ for LLaVA with left padding).
        """
        if inputs.get("position_ids") is not None:
            pos = inputs["position_ids"]
        elif for_generate:
            pos = self.generate_positions(inputs)
        else:
            pos = self.forward_positions(inputs)
        return pos if pos.dim() == 3 else pos.unsqueeze(0)

    def generate_positions(self, inputs: dict[str, Any]) -> Tensor:
        """Positions generate() computes for these inputs (its own helper, so keep-all stays bit-exact)."""
        kwargs = {k: v for k, v in inputs.items() if k not in PIXEL_KEYS and v is not None}
        return self.model._prepare_position_ids_for_generation(inputs["input_ids"], kwargs)

    def forward_positions(self, inputs: dict[str, Any]) -> Tensor:
        """Positions the unwrapped ``forward`` uses when given none (``(B, L)`` or ``(rows, B, L)``)."""
        ids = inputs["input_ids"]
        return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)

    def rope_positions(self, positions: Tensor) -> Tensor:
        """The ``(rope_rows, B, L)`` rows of ``(rows, B, L)`` positions that the rotary embedding reads."""
        return positions[:1]

    def finish_positions(self, gathered: Tensor, attention_mask: Tensor, compact: bool) -> Tensor:
        """Turn the gathered ``(rows, B, L')`` positions into what the model takes.

        ``compact`` re-indexes every kept token consecutively (the LLaVA/DivPrune convention); otherwise
        kept tokens keep their original positions, gaps included.
        """
        if compact:
            gathered = consecutive_positions(attention_mask).expand_as(gathered)
        return gathered[0] if gathered.shape[0] == 1 else gathered

    def fill_missing_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Add inputs the model needs but older processors may not produce (default: none)."""
        return inputs


def consecutive_positions(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over the attended tokens of each row (0 on padding), as generate() numbers them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0).unsqueeze(0)
