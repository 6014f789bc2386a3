"""``vtr_qwen3_vl``: lmms-eval's qwen3_vl, reduced."""

from lmms_eval.models.chat.qwen3_vl import Qwen3_VL as Qwen3_VLChat
from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

from vtr.eval.models.base import Reduced


class VtrQwen3VL(Reduced, Qwen3_VL):
    """Simple variant (``--force_simple``; needed for loglikelihood / multiple-choice tasks)."""

    gpu_only_data_parallel = True


class VtrQwen3VLChat(Reduced, Qwen3_VLChat):
    """Chat variant (lmms-eval's default when both exist)."""

    gpu_only_data_parallel = True
