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

Refused, each with its reason: the in-LLM stage (each decoder layer adds a per-layer input embedding of
the full prompt, and the KV-sharing layers reuse the keys of earlier layers and slice the prompt to its
last token, none of which a shortened sequence can take without patching the text model), vision
attention (hiprune, visionzip: the tower's attention has 2-D rotary and a padding mask vtr does not
recompute yet), vision-encoder merging (the pooler's fixed windows) and video (its frames carry
timestamps vtr does not lay out yet).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vtr.adapters.base import Adapter
from vtr.errors import ReductionError
from vtr.layout import ItemLayout
from vtr.methods.base import Method, VisionInfo
from vtr.vision.merging import MergeTarget


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

    def rotary_kinds(self) -> tuple[str | None, ...]:
        """Local and global layers rotate with their own bases (``rotary_emb(x, positions, layer_type)``)."""
        return tuple(self.config.get_text_config().layer_types)

    def vision_info(self) -> VisionInfo:
        raise ReductionError(
            f"vtr does not read vision-encoder attention on {self.config.model_type} yet (hiprune, visionzip): its "
            f"tower's attention uses 2-D rotary positions and a padding mask that vtr does not recompute; use "
            f"divprune, random or pool there")

    def check_in_llm(self, method: Method) -> None:
        raise ReductionError(
            f"{method.name} prunes inside the LLM, which vtr does not do on {self.config.model_type} yet: every "
            f"decoder layer adds a per-layer input embedding of the whole prompt, and the KV-sharing layers reuse "
            f"earlier layers' keys and cut the prompt to its last token, so a sequence shortened between layers "
            f"does not fit them; use a pre-LLM method (divprune, random, pool, ...) there")

    def merge_target(self) -> MergeTarget:
        raise ReductionError(
            f"vision-encoder merging (tome, dymu) does not run on {self.config.model_type}: the pooler "
            f"average-pools fixed k x k windows of patches into each LLM token, so a token merged across windows "
            f"has no place in the pooled grid; use a pre-LLM method (divprune, random, pool, ...) there")
