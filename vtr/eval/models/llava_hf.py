"""``vtr_llava_hf``: lmms-eval's llava_hf (llava, llava_next, llava_onevision checkpoints), reduced."""

from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf

from vtr.eval.models.base import Reduced


class VtrLlavaHf(Reduced, LlavaHf):
    """Simple variant (``--force_simple``; needed for loglikelihood / multiple-choice tasks)."""


class VtrLlavaHfChat(Reduced, LlavaHfChat):
    """Chat variant (lmms-eval's default when both exist)."""
