"""``vtr_gemma4``: lmms-eval's gemma4 (``google/gemma-4-*-it``), reduced. lmms-eval has only a simple class for
it; the class casts every input to bfloat16 and loads the model in bfloat16."""

from typing import Any

from lmms_eval.models.simple.gemma4 import Gemma4

from vtr.eval.models.base import Reduced
from vtr.eval.models.videos import decode_with_local_backends


class VtrGemma4(Reduced, Gemma4):
    """Simple variant, the only one: each image and each video its own visual input, at the class's
    ``max_soft_tokens``. Video paths are decoded with decord or PyAV (transformers would need torchcodec)."""

    gpu_only_data_parallel = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        decode_with_local_backends(self.processor.video_processor)
