"""Tiny offline lmms-eval tasks shipped with vtr (``vtr sweep`` passes this directory to lmms-eval).

Every image and video is drawn from the document's fields (``utils.py``), so the tasks need no download
and no binary files: ``vtr_colors`` (image, generate_until), ``vtr_colors_mc`` (image, multiple choice
scored by loglikelihood) and ``vtr_video_colors`` (video, generate_until). Use them by hand with
``python -m lmms_eval --include_path <this directory> --tasks vtr_colors ...``.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
