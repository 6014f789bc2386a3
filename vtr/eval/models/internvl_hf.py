"""``vtr_internvl_hf``: lmms-eval's internvl_hf (HF-format InternVL3 / 3.5 checkpoints, e.g.
``OpenGVLab/InternVL3_5-8B-HF``), reduced. lmms-eval has only a chat class for them (its ``internvl3_5``
class loads the original remote-code checkpoints, which are not ``InternVLForConditionalGeneration``)."""

from typing import Any

from lmms_eval.models.chat.internvl_hf import InternVLHf

from vtr.eval.models.base import Reduced
from vtr.eval.models.videos import decode_with_local_backends


class VtrInternVLHfChat(Reduced, InternVLHf):
    """Chat variant, the only one: images with dynamic tiling, videos as frames. Video paths are decoded with
    decord or PyAV (transformers would need torchcodec)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        decode_with_local_backends(self.processor.video_processor)
