"""vtr's offline lmms-eval tasks: documents become images, videos and scores without any download."""

from __future__ import annotations

import importlib.util

import decord
import numpy as np
import yaml

from vtr.eval.tasks import TASKS_DIR


def task_utils():
    spec = importlib.util.spec_from_file_location("vtr_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_task_reads_the_shipped_documents():
    names = {}
    for path in TASKS_DIR.glob("*.yaml"):
        text = path.read_text().replace("!function", "")  # lmms-eval resolves these; plain YAML need not
        config = yaml.safe_load(text)
        assert (TASKS_DIR / config["dataset_kwargs"]["data_files"]["test"]).is_file()
        names[config["task"]] = config["output_type"]
    assert names == {"vtr_colors": "generate_until", "vtr_colors_mc": "multiple_choice",
                     "vtr_video_colors": "generate_until", "vtr_synthetic": "generate_until"}


def test_images_videos_and_scores_follow_the_document():
    utils = task_utils()
    doc = {"color": "blue", "answer": "blue"}
    [image] = utils.doc_to_visual(doc)
    assert image.size == (64, 48) and image.getpixel((60, 44)) == (0, 0, 255)
    [path] = utils.video_doc_to_visual(doc)
    assert path.endswith(".mp4") and utils.video_doc_to_visual(doc) == [path]  # written once, then reused
    frames = decord.VideoReader(path).get_batch(list(range(8))).asnumpy()
    assert frames.shape == (8, 48, 64, 3) and np.abs(frames[:, 44, 60].astype(int) - [0, 0, 255]).max() < 40
    assert not np.array_equal(frames[0], frames[-1])  # the square moves
    assert utils.process_results(doc, [" Blue. It is"]) == {"exact_match": 1.0}
    assert utils.process_results(doc, ["red"]) == {"exact_match": 0.0}


def test_synthetic_documents_redraw_their_test_sample():
    from vtr.eval import synthetic

    utils = task_utils()
    doc = {"index": 7, "question": "is there a red object ?", "answer": "no"}
    [image] = utils.synthetic_doc_to_visual(doc)
    assert image.tobytes() == synthetic.sample("test", 7).image().tobytes()
    assert utils.synthetic_doc_to_text(doc) == "is there a red object ?"
