"""``vtr_gemma3``: lmms-eval's gemma3 (``google/gemma-3-*-it``), reduced. lmms-eval has only a simple class for
it; the class casts every input to bfloat16, so load the model in bfloat16 (its default)."""

from lmms_eval.models.simple.gemma3 import Gemma3

from vtr.eval.models.base import Reduced


class VtrGemma3(Reduced, Gemma3):
    """Simple variant, the only one: images (each pan-and-scan crop its own visual input), videos as frames."""

    gpu_only_data_parallel = True
