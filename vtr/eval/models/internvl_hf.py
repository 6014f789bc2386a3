"""``vtr_internvl_hf``: lmms-eval's internvl_hf (HF-format InternVL3 / 3.5 checkpoints, e.g.
``OpenGVLab/InternVL3_5-8B-HF``), reduced. lmms-eval has only a chat class for them (its ``internvl3_5``
class loads the original remote-code checkpoints, which are not ``InternVLForConditionalGeneration``)."""

from lmms_eval.models.chat.internvl_hf import InternVLHf

from vtr.eval.models.base import Reduced


class VtrInternVLHfChat(Reduced, InternVLHf):
    """Chat variant, the only one: images with dynamic tiling, videos as frames."""
