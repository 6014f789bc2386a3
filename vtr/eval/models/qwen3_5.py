"""``vtr_qwen3_5``: lmms-eval's qwen3_5 (Qwen3.5 / 3.6, dense and MoE), reduced.

lmms-eval's class loads the MoE model (``qwen3_5_moe``) when the checkpoint id names its active size
(``A3B``, as ``Qwen/Qwen3.6-35B-A3B``), the dense one otherwise; Qwen3-VL-MoE checkpoints go through
``vtr_qwen3_vl`` by the same rule.
"""

from lmms_eval.models.chat.qwen3_5 import Qwen3_5 as Qwen3_5Chat
from lmms_eval.models.simple.qwen3_5 import Qwen3_5

from vtr.eval.models.base import Reduced


class VtrQwen3_5(Reduced, Qwen3_5):
    """Simple variant (``--force_simple``; needed for loglikelihood / multiple-choice tasks)."""

    gpu_only_data_parallel = True


class VtrQwen3_5Chat(Reduced, Qwen3_5Chat):
    """Chat variant (lmms-eval's default when both exist)."""

    gpu_only_data_parallel = True
