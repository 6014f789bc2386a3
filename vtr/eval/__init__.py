"""lmms-eval integration: vtr model classes for lmms-eval, tiny offline tasks, and the sweep runner.

- ``lmms``: the ``lmms_eval.models`` entry point (``vtr_llava_hf``, ``vtr_qwen2_vl``, ``vtr_qwen2_5_vl``,
  ``vtr_qwen3_vl``); ``models``: those classes (lmms-eval's own, with ``models.base.Reduced`` in front,
  loading as ``models.loading`` says); ``records``: what each request logs about its reduction (visual
  tokens, FLOPs); ``costs``: their means per sample (in the results JSON and the sweep's table).
- ``tasks``: offline tasks (image, multiple choice, video) that need no download.
- ``sweep``: ``vtr sweep``, one lmms-eval run per (method, budget), resumable; built from ``plan`` (what
  runs), ``store`` (results.jsonl, the sweep's lock), ``runner`` (the lmms-eval subprocess and its checks), ``outputs``
  (reading a run back) and ``report`` (summary.md and plots).

Nothing here is imported by ``import vtr``: lmms-eval is an optional dependency
(the ``eval`` extra of the ``visual-token-reduction`` distribution: ``pip install -e '.[eval]'``).
"""
