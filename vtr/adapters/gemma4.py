"""Gemma 4 (``gemma4``): a native-resolution vision tower whose patches are average-pooled k x k into a
variable number of LLM tokens per image.

What the family does, read from transformers' ``modeling_gemma4``:

* the processor resizes each image, keeping its aspect ratio, to a patch budget (``max_soft_tokens``
  pooled tokens: 70 .. 1120), patchifies it into ``pixel_values`` (images, max patches, 3 p^2) and gives
  every patch its (x, y) in ``image_position_ids`` ((-1, -1) on padding patches);
* the pooler averages each k x k window of patches (``pooling_kernel_size``) into one token, numbered
  row-major over the pooled grid, and drops the windows that only padding fell into: an image of
  (W, H) patches becomes an (H/k, W/k) grid of tokens, one run of placeholders;
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

Refused as well, each with its reason: vision-encoder merging (the pooler's fixed windows) and video (its
frames carry timestamps vtr does not lay out yet).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from vtr.adapters.base import Adapter
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import AttentionRequest, Method, VisionInfo
from vtr.pixels import Panel, PixelMap, grid_boxes
from vtr.vision.attention import AttentionCapture, gemma4_vit_attention
from vtr.vision.merging import MergeTarget


def gemma4_vision_info(config) -> VisionInfo:
    """No class token; the features are the last layer's output, pooled."""
    depth = config.vision_config.num_hidden_layers
    return VisionInfo(depth=depth, feature_layer=depth - 1, has_cls=False, encoder="clip")


def pooled_widths(config, image_position_ids: Tensor) -> list[int]:
    """Tokens per pooled row of each image: its patch width (largest x + 1) over the pooling kernel."""
    kernel = int(config.vision_config.pooling_kernel_size)
    return ((image_position_ids[..., 0].amax(1) + 1) // kernel).tolist()


class Gemma4Adapter(Adapter):
    model_types = ("gemma4",)
    modalities_handled = ("image",)
    demo_image_size = (64, 48)  # native resolution: the processor keeps the aspect ratio

    def item_layouts(self, modality: str, inputs: dict[str, Any], features: list[Tensor]) -> list[ItemLayout]:
        widths = pooled_widths(self.config, inputs["image_position_ids"])
        if len(widths) != len(features) or any(f.shape[0] % w for f, w in zip(features, widths)):
            raise ReductionError(
                f"Gemma 4 gave {len(features)} images of {[f.shape[0] for f in features]} tokens for "
                f"image_position_ids of pooled widths {widths}: pass the processor's image_position_ids with its "
                f"pixel_values")
        return [ItemLayout.grid_only((1, f.shape[0] // w, w), f.device) for f, w in zip(features, widths)]

    def pixel_maps(self, modality: str, inputs: dict[str, Any], layouts: list[ItemLayout]) -> list[PixelMap]:
        """Each image's patches put back in place (the processor flattens each patch as (p, p, channels), in
        raster order, padding after them); a token covers its k x k window of patches."""
        patch = int(self.config.vision_config.patch_size)
        maps = []
        for pixels, layout in zip(inputs["pixel_values"], layouts):
            _, rows, columns = layout.segments[0].grid
            kernel = int(self.config.vision_config.pooling_kernel_size)
            high, wide = rows * kernel, columns * kernel  # patches
            image = pixels[:high * wide].view(high, wide, patch, patch, -1).permute(4, 0, 2, 1, 3)
            image = image.reshape(-1, high * patch, wide * patch)
            maps.append(PixelMap((Panel("image", image),), grid_boxes(layout.segments[0].grid, high * patch,
                                                                      wide * patch)))
        return maps

    def rotary_kinds(self) -> tuple[str | None, ...]:
        """Local and global layers rotate with their own bases (``rotary_emb(x, positions, layer_type)``)."""
        return tuple(self.config.get_text_config().layer_types)

    # ------------------------------------------------------------------ vision attention
    def vision_info(self) -> VisionInfo:
        return gemma4_vision_info(self.config)

    def vision_attention_module(self, layer: int) -> nn.Module:
        return self.model.model.vision_tower.encoder.layers[layer].self_attn

    def item_attention(self, modality: str, capture: AttentionCapture, requests: dict[str, AttentionRequest],
                       inputs: dict[str, Any]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per image, the scores and mean keys of its patches averaged over each pooling window, as the pooler
        averages the features: an LLM token's score is the mean of its k x k patches' scores."""
        positions = inputs["image_position_ids"]
        widths = pooled_widths(self.config, positions)
        per_item: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in widths]
        for name, request in requests.items():
            hidden, kwargs = capture.hidden_states(request.layer)
            with torch.no_grad():
                attention = gemma4_vit_attention(self.vision_attention_module(request.layer), hidden,
                                                 kwargs["position_embeddings"], kwargs["position_ids"], request.query)
            for item, scores, keys, where, width in zip(per_item, attention.scores, attention.keys, positions, widths):
                pooled = self._pooled(torch.cat([scores.unsqueeze(-1), keys], -1), where, width)
                item[name] = (pooled[:, 0], pooled[:, 1:])
        return per_item

    def _pooled(self, values: Tensor, positions: Tensor, width: int) -> Tensor:
        """(N, C) per-patch values of one image -> (tokens, C): the mean over each k x k window, numbered
        row-major over the pooled grid (the pooler's order); padding patches (position -1) belong to none."""
        kernel = int(self.config.vision_config.pooling_kernel_size)
        valid = (positions != -1).all(-1)
        window = positions[valid] // kernel
        index = window[:, 0] + width * window[:, 1]
        tokens = int(valid.sum()) // kernel ** 2
        sums = values.new_zeros(tokens, values.shape[-1]).index_add_(0, index.to(values.device), values[valid])
        return sums / kernel ** 2

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
