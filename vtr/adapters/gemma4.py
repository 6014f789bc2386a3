"""Gemma 4 (``gemma4``): a native-resolution vision tower whose patches are average-pooled k x k into a
variable number of LLM tokens per image.

What the family does, read from transformers' ``modeling_gemma4``:

* the processor resizes each image, keeping its aspect ratio, to a patch budget (``max_soft_tokens``
  pooled tokens: 70 .. 1120), patchifies it into ``pixel_values`` (images, max patches, 3 p^2) and gives
  every patch its (x, y) in ``image_position_ids`` ((-1, -1) on padding patches);
* the pooler averages each k x k window of patches (``pooling_kernel_size``) into one token, numbered
  row-major over the pooled grid, and drops the windows that only padding fell into: an image of
  (W, H) patches becomes an (H/k, W/k) grid of tokens, one run of placeholders;
* a video is its sampled frames, each patchified like an image (``pixel_values_videos``, ``video_position_ids``,
  ``num_frames_per_video``) and pooled into one grid per frame: a (frames, H/k, W/k) grid, its frames' runs of
  placeholders separated by their timestamps in the text;
* with ``use_bidirectional_attention == "vision"`` (the larger models) image tokens attend to each other
  inside runs of ``mm_token_type_ids``, which the engine shrinks with the prompt, so a pre-LLM prune is the
  model run on the shortened prompt (its per-layer embeddings are read from the shortened ids too).

Vision attention (hiprune, visionzip): the tower's own attention recomputed at the requested layer (its
q/k norms and 2-D rotary, padding patches masked as the model masks them), then averaged over each pooling
window as the features were.

In-LLM methods: every decoder layer adds a per-layer input embedding of each token, handed to it for the
whole prompt; from the pruning layer on it is taken at the kept columns (``patch_decoder``). On models with
KV-sharing layers (E2B, E4B, 31B) the last layers reuse the keys of the last earlier layer of their kind
(``cache_layers``) and, during generate, transformers runs them on the prompt's last token only: a prune must
come at or before those earlier layers (so that they compute their keys on the kept tokens), and positions
are not renumbered (the last token keeps its original position there); both are checked at wrap.

Refused, with its reason: vision-encoder merging (the pooler's fixed windows).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from vtr.adapters.base import Adapter, last_layer_vision_info
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest, Method, VisionInfo
from vtr.pixels import Panel, PixelMap, grid_boxes
from vtr.vision.attention import AttentionCapture, gemma4_vit_attention
from vtr.vision.merging import MergeTarget


def pooled_widths(config, image_position_ids: Tensor) -> list[int]:
    """Tokens per pooled row of each image: its patch width (largest x + 1) over the pooling kernel."""
    kernel = int(config.vision_config.pooling_kernel_size)
    return ((image_position_ids[..., 0].amax(1) + 1) // kernel).tolist()


def tower_sequences(modality: str, inputs: dict[str, Any]) -> tuple[Tensor, Tensor, list[int]] | None:
    """The tower's sequences of a call's ``modality`` inputs (patchified pixels and their positions, one per
    image or video frame) and how many of them each item has (an image: one; a video: its frames); ``None``
    when the call has none."""
    if modality == "image":
        pixels = inputs.get("pixel_values")
        return None if pixels is None else (pixels, inputs["image_position_ids"], [1] * pixels.shape[0])
    pixels = inputs.get("pixel_values_videos")
    if pixels is None:
        return None
    return pixels, inputs["video_position_ids"], [int(n) for n in inputs["num_frames_per_video"].tolist()]


class Gemma4Adapter(Adapter):
    model_types = ("gemma4",)
    demo_image_size = (64, 48)  # native resolution: the processor keeps the aspect ratio
    rotary_per_layer_type = True

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        """An image: its (1, H/k, W/k) pooled grid; a video: (frames, H/k, W/k), every frame pooled alike."""
        _, positions, frames = tower_sequences(modality, inputs)
        every = pooled_widths(self.config, positions)  # one host read for every image or frame
        widths = [every[sum(frames[:i])] for i in range(len(frames))]
        if len(frames) != len(features) or any(f.shape[0] % (n * w) for f, n, w in zip(features, frames, widths)):
            raise ReductionError(
                f"Gemma 4 gave {len(features)} {modality}s of {[f.shape[0] for f in features]} tokens for "
                f"{modality}_position_ids of pooled widths {widths}: pass the processor's {modality}_position_ids "
                f"with its pixels")
        return [ItemLayout.grid_only((n, f.shape[0] // (n * w), w), f.device)
                for f, n, w in zip(features, frames, widths)]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        """Each image's (or frame's) patches put back in place (the processor flattens each patch as (p, p,
        channels), in raster order, padding after them); a token covers its k x k window of patches."""
        patch, kernel = int(self.config.vision_config.patch_size), int(self.config.vision_config.pooling_kernel_size)
        pixels, _, frames = tower_sequences(modality, inputs)
        maps, first = [], 0
        for layout, n in zip(layouts, frames):
            grid = layout.segments[0].grid
            high, wide = grid[1] * kernel, grid[2] * kernel  # patches
            pictures = pixels[first:first + n, :high * wide].reshape(n, high, wide, patch, patch, -1)
            pictures = pictures.permute(0, 5, 1, 3, 2, 4).reshape(n, -1, high * patch, wide * patch)
            names = ["image"] if modality == "image" else [f"frame {i}" for i in range(n)]
            maps.append(PixelMap(tuple(Panel(name, picture) for name, picture in zip(names, pictures)),
                                 grid_boxes(grid, high * patch, wide * patch)))
            first += n
        return maps

    # ------------------------------------------------------------------ vision attention
    def vision_info(self) -> VisionInfo:
        return last_layer_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per image (or video: its frames in order), the scores and mean keys of its patches averaged over each
        pooling window, as the pooler averages the features: an LLM token's score is the mean of its k x k
        patches' scores (softmax over its own image or frame)."""
        _, positions, frames = tower_sequences(modality, inputs)
        kernel = int(self.config.vision_config.pooling_kernel_size)
        tokens = ((positions != -1).all(-1).sum(1) // kernel ** 2).tolist()  # per image or frame: one host read
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in frames]
        for name, request in requests.items():
            hidden, kwargs = capture.hidden_states(request.layer)
            with torch.no_grad():
                attention = gemma4_vit_attention(self.vision_attention_module(request.layer), hidden,
                                                 kwargs["position_embeddings"], kwargs["position_ids"], request.query)
            values = self._window_means(torch.cat([torch.stack(attention.scores).unsqueeze(-1),
                                                   torch.stack(attention.keys)], -1), positions)
            sequences = [v[:n] for v, n in zip(values.unbind(0), tokens)]
            first = 0
            for item, n in zip(per_item, frames):
                joined = torch.cat(sequences[first:first + n])
                item[name] = (joined[:, 0], joined[:, 1:])
                first += n
        return per_item

    def _window_means(self, values: Tensor, positions: Tensor) -> Tensor:
        """(S, N, C) per-patch values of S images or frames -> (S, N / k^2, C): the mean over each k x k
        window, numbered row-major over each pooled grid (the pooler's order); padding patches (position -1)
        go to a slot past the end, and windows past an image's own grid stay zero."""
        kernel = int(self.config.vision_config.pooling_kernel_size)
        length = values.shape[1] // kernel ** 2
        widths = (positions[..., 0].amax(1, keepdim=True) + 1) // kernel
        window = positions.clamp_min(0) // kernel
        index = (window[..., 0] + widths * window[..., 1]).masked_fill((positions == -1).all(-1), length)
        sums = values.new_zeros(values.shape[0], length + 1, values.shape[-1])
        sums.scatter_add_(1, index.to(values.device).unsqueeze(-1).expand(-1, -1, values.shape[-1]), values)
        return sums[:, :length] / kernel ** 2

    def cache_layers(self) -> tuple[int, ...]:
        """A KV-sharing layer reads the keys (and cache) of the last earlier layer of its kind."""
        text = self.config.get_text_config()
        stores = {kind: i for i, (kind, mode) in enumerate(zip(text.layer_types, text.kv_sharing_modes))
                  if mode == "store"}
        return tuple(stores[kind] if mode == "reuse" else i
                     for i, (kind, mode) in enumerate(zip(text.layer_types, text.kv_sharing_modes)))

    def check_in_llm(self, method: Method) -> None:
        """KV-sharing layers (E2B, E4B, 31B) reuse the keys that the last earlier layer of each kind computed:
        every pruning layer must come at or before those layers, so that they compute their keys on the kept
        tokens (and before the sharing layers, whose prompt transformers cuts to its last token)."""
        text = self.config.get_text_config()
        stores = [i for i, mode in enumerate(text.kv_sharing_modes) if mode == "store"]
        if not any(mode == "reuse" for mode in text.kv_sharing_modes):
            return
        if method.renumbers_positions:
            raise ReductionError(
                f"{method.describe()} renumbers positions after each drop, which this {self.config.model_type} "
                f"model's KV-sharing layers cannot follow (transformers runs them on the prompt's last token at its "
                f"original position); pass renumber=False")
        late = [k for k in method.check_layers(text.num_hidden_layers) if k > min(stores)]
        if late:
            raise ReductionError(
                f"{method.describe()} prunes at layer(s) {late}, after layer {min(stores)}, the first whose keys this "
                f"{self.config.model_type} model's KV-sharing layers reuse (layers {stores} -> the last "
                f"{text.num_kv_shared_layers}); those layers would attend tokens a later layer dropped. Prune at "
                f"layer {min(stores)} or earlier (layer=K, layers=(...))")

    def patch_decoder(self, pruner: Any) -> Callable[[], None]:
        """Every decoder layer adds its per-layer input embedding of each token (passed positionally, for the
        whole prompt): from the pruning layer on, take it at the columns the layer runs."""

        def at_kept_columns(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if pruner.run is None or len(args) < 2 or args[1] is None or args[1].shape[1] == args[0].shape[1]:
                return None
            return (args[0], pruner.kept_columns(args[1]), *args[2:]), kwargs

        handles = [layer.register_forward_pre_hook(at_kept_columns, with_kwargs=True)
                   for layer in self.decoder().layers]

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return undo

    def merge_target(self) -> MergeTarget:
        raise ReductionError(
            f"vision-encoder merging (tome, dymu) does not run on {self.config.model_type}: the pooler "
            f"average-pools fixed k x k windows of patches into each LLM token, so a token merged across windows "
            f"has no place in the pooled grid; use a pre-LLM method (divprune, random, pool, ...) there")
