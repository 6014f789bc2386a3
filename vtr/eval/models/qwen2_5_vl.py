"""``vtr_qwen2_5_vl``: lmms-eval's qwen2_5_vl, reduced."""

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL

from vtr.eval.models.base import Reduced


class VtrQwen2_5_VL(Reduced, Qwen2_5_VL):
    """Simple variant (``--force_simple``; needed for loglikelihood / multiple-choice tasks)."""

    gpu_only_data_parallel = True


class VtrQwen2_5_VLChat(Reduced, Qwen2_5_VLChat):
    """Chat variant (lmms-eval's default when both exist)."""

    gpu_only_data_parallel = True
