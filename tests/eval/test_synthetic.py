"""The synthetic benchmark: deterministic, disjoint splits, answers that follow the drawn scene."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from vtr.eval import synthetic
from vtr.eval.tasks import TASKS_DIR


def digest(sample: synthetic.Sample) -> str:
    return hashlib.sha256(np.asarray(sample.image()).tobytes()).hexdigest()


def test_same_seed_same_images_and_questions():
    first, again = synthetic.samples("test", 20), synthetic.samples("test", 20)
    assert first == again
    assert [digest(s) for s in first] == [digest(s) for s in again]
    assert synthetic.training_item(7, 4) == synthetic.training_item(7, 4)
    assert len({digest(s) for s in first}) == 20


def test_splits_are_disjoint():
    seen = {split: {digest(s) for s in synthetic.samples(split, 300)} for split in synthetic.SPLIT_SEEDS}
    train_items = {synthetic.render(synthetic.training_item(i, 1)[0]).tobytes() for i in range(300)}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    test_images = {s.image().tobytes() for s in synthetic.samples("test", 300)}
    assert not train_items & test_images


def test_answers_follow_the_scene():
    for item in synthetic.samples("val", 200):
        objects = item.scene.objects
        by_color = {o.color: o for o in objects}
        by_shape = {o.shape: o for o in objects}
        assert len(by_color) == len(by_shape) == len(objects)  # colours and shapes are unique in a scene
        words = item.question.split()
        evidence = [objects[i] for i in item.evidence]
        if item.question_type == "color":
            assert item.answer == by_shape[words[4]].color and evidence == [by_shape[words[4]]]
        elif item.question_type == "shape":
            assert item.answer == by_color[words[4]].shape and evidence == [by_color[words[4]]]
        elif item.question_type == "count":
            assert item.answer == synthetic.COUNTS[len(objects) - 1] and evidence == list(objects)
        elif item.question_type == "position":
            first, second = by_color[words[2]], by_color[words[9]]
            assert abs(first.center_x - second.center_x) >= synthetic.MIN_DX
            assert item.answer == ("left" if first.center_x < second.center_x else "right")
            assert evidence == [first, second]
        else:
            assert item.answer == ("yes" if words[3] in by_color else "no")
            assert evidence == ([by_color[words[3]]] if item.answer == "yes" else [])
        assert set(words) <= set(synthetic.vocabulary())


def test_objects_are_drawn_where_the_scene_and_its_mask_say():
    item = synthetic.sample("test", 3)
    pixels = np.asarray(item.image()).astype(int)
    mask = synthetic.object_mask(item.scene)
    for i, obj in enumerate(item.scene.objects):
        centre = pixels[obj.top + obj.size * 2 // 3, obj.left + obj.size // 2]  # inside every shape
        assert np.abs(centre - synthetic.COLORS[obj.color]).max() == 0
        assert (pixels[mask == i + 1] == synthetic.COLORS[obj.color]).all()
        ys, xs = np.nonzero(mask == i + 1)
        assert ys.min() >= obj.top and xs.max() < obj.left + obj.size
    assert item.image().size == (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)
    assert 0.01 < (mask > 0).mean() < 0.15  # the objects are a small part of the image


def test_every_question_type_and_answer_is_balanced_enough():
    items = synthetic.samples("test", 500)
    types = [s.question_type for s in items]
    assert all(types.count(t) == 100 for t in synthetic.QUESTION_TYPES)
    for kind in synthetic.QUESTION_TYPES:  # no answer covers more than 60% of its type: the prior is weak
        answers = [s.answer for s in items if s.question_type == kind]
        assert max(answers.count(a) for a in set(answers)) <= 0.6 * len(answers)


def test_bad_split_or_index_is_named():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        synthetic.sample("dev", 0)
    with pytest.raises(ValueError, match="index must be >= 0"):
        synthetic.sample("test", -1)


def test_the_shipped_task_documents_are_the_generator_s():
    lines = (TASKS_DIR / "synthetic_test.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == synthetic.task_documents(500)
