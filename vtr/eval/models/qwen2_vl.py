"""``vtr_qwen2_vl``: lmms-eval's qwen2_vl, reduced (lmms-eval has no chat variant for it)."""

from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

from vtr.eval.models.base import Reduced


class VtrQwen2VL(Reduced, Qwen2_VL):
    """Simple variant."""

    gpu_only_data_parallel = True
