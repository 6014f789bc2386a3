"""A procedurally rendered visual benchmark whose answers live in a few image patches.

Every sample is drawn from a seed: a 112x112 textured grey background (so that no patch is blank and
a method cannot find the objects by "the only non-constant tokens") and one to three small shapes, each
with its own colour and its own shape, about 2x2 to 3x3 patches of an 8-pixel-patch encoder (196 patch
tokens per image). The questions ask for the colour of a shape, the shape of a colour, the number of
objects, whether one object is left or right of another, and whether a colour is present; every answer
is one word. Since an object covers only ~3% of the tokens, a reduction that keeps the wrong 11% of
the tokens loses it, while one that finds the objects keeps the answer: that is what makes accuracy
here rank methods.

Splits are disjoint by construction: sample ``index`` of a split is drawn from the generator seeded
with ``(SPLIT_SEEDS[split], index)``. Only numpy and PIL are used; rendering takes well under a
millisecond per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 112
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "green": (30, 185, 60), "blue": (40, 80, 235), "yellow": (240, 215, 30),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
QUESTION_TYPES = ("color", "shape", "count", "position", "presence")
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
OBJECT_SIZES = (16, 22)  # bounding-box side in pixels, inclusive range
MIN_GAP = 4  # pixels between bounding boxes
MIN_DX = 12  # horizontal distance between the centres of the two objects of a position question
TEMPLATES = {
    "color": "what color is the {shape} ?",
    "shape": "what shape is the {color} object ?",
    "count": "how many objects are there ?",
    "position": "is the {color} object left or right of the {other} object ?",
    "presence": "is there a {color} object ?",
}
ANSWERS = (*COLORS, *SHAPES, *COUNTS, "left", "right", "yes", "no")


def vocabulary() -> list[str]:
    """Every word a question or an answer of this benchmark uses (for a word-level tokenizer)."""
    words = {word for template in TEMPLATES.values() for word in template.split() if "{" not in word}
    return sorted(words | set(ANSWERS))


@dataclass(frozen=True)
class Shape:
    """One object: its colour, shape and bounding box ``(left, top, size)`` in pixels."""

    color: str
    shape: str
    left: int
    top: int
    size: int

    @property
    def center_x(self) -> float:
        return self.left + self.size / 2


@dataclass(frozen=True)
class Scene:
    """What is drawn: the background's seed and the objects."""

    background_seed: int
    objects: tuple[Shape, ...]


@dataclass(frozen=True)
class Sample:
    """One benchmark item: the scene, one question about it, and its one-word answer."""

    split: str
    index: int
    scene: Scene
    question_type: str
    question: str
    answer: str
    evidence: tuple[int, ...]  # the objects (indices into scene.objects) the answer rests on

    def image(self) -> Image.Image:
        return render(self.scene)


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return np.random.default_rng([SPLIT_SEEDS[split], index])


def _place(rng: np.random.Generator, count: int, separated: bool) -> list[tuple[int, int, int]]:
    """``count`` non-overlapping boxes (rejection sampling; a few tries suffice at this density).
    ``separated``: the first two centres are at least ``MIN_DX`` apart horizontally."""
    while True:
        boxes: list[tuple[int, int, int]] = []
        for _ in range(50 * count):
            size = int(rng.integers(OBJECT_SIZES[0], OBJECT_SIZES[1] + 1))
            left, top = (int(v) for v in rng.integers(2, IMAGE_SIZE - size - 2, size=2))
            if all(left + size + MIN_GAP <= l or l + s + MIN_GAP <= left or top + size + MIN_GAP <= t
                   or t + s + MIN_GAP <= top for l, t, s in boxes):
                boxes.append((left, top, size))
                if len(boxes) == count:
                    break
        if len(boxes) == count and (not separated or
                                    abs((boxes[0][0] + boxes[0][2] / 2) - (boxes[1][0] + boxes[1][2] / 2)) >= MIN_DX):
            return boxes


def make_scene(rng: np.random.Generator, count: int, separated: bool = False) -> Scene:
    """``count`` objects with distinct colours and distinct shapes at random places."""
    colors = rng.permutation(list(COLORS))[:count]
    shapes = rng.permutation(list(SHAPES))[:count]
    boxes = _place(rng, count, separated)
    objects = tuple(Shape(str(c), str(s), *box) for c, s, box in zip(colors, shapes, boxes))
    return Scene(int(rng.integers(2**31)), objects)


@dataclass(frozen=True)
class Question:
    """A question, its one-word answer, and the objects whose pixels decide it (none for an absent colour)."""

    text: str
    answer: str
    evidence: tuple[int, ...]


def ask(scene: Scene, question_type: str, rng: np.random.Generator) -> Question:
    """One question of ``question_type`` about ``scene``; position questions need two objects."""
    objects = scene.objects
    target = int(rng.integers(len(objects)))
    obj = objects[target]
    if question_type == "color":
        return Question(TEMPLATES["color"].format(shape=obj.shape), obj.color, (target,))
    if question_type == "shape":
        return Question(TEMPLATES["shape"].format(color=obj.color), obj.shape, (target,))
    if question_type == "count":
        return Question(TEMPLATES["count"], COUNTS[len(objects) - 1], tuple(range(len(objects))))
    if question_type == "position":
        if len(objects) < 2:
            raise ValueError("a position question needs a scene with at least two objects")
        first, second = (0, 1) if rng.random() < 0.5 else (1, 0)
        answer = "left" if objects[first].center_x < objects[second].center_x else "right"
        text = TEMPLATES["position"].format(color=objects[first].color, other=objects[second].color)
        return Question(text, answer, (first, second))
    if question_type == "presence":
        if rng.random() < 0.5:
            return Question(TEMPLATES["presence"].format(color=obj.color), "yes", (target,))
        absent = [c for c in COLORS if c not in {o.color for o in objects}]
        return Question(TEMPLATES["presence"].format(color=absent[int(rng.integers(len(absent)))]), "no", ())
    raise ValueError(f"unknown question type {question_type!r}; the types are {', '.join(QUESTION_TYPES)}")


def scene_for(question_type: str, rng: np.random.Generator) -> Scene:
    """A scene of 1-3 objects (2-3, horizontally apart, when the question compares two)."""
    if question_type == "position":
        return make_scene(rng, int(rng.integers(2, 4)), separated=True)
    return make_scene(rng, int(rng.integers(1, 4)))


def sample(split: str, index: int) -> Sample:
    """Sample ``index`` of ``split``; question types cycle so any 5 consecutive samples cover all five."""
    rng = _rng(split, index)
    question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    scene = scene_for(question_type, rng)
    question = ask(scene, question_type, rng)
    return Sample(split, index, scene, question_type, question.text, question.answer, question.evidence)


def samples(split: str, count: int, start: int = 0) -> list[Sample]:
    return [sample(split, index) for index in range(start, start + count)]


def training_item(index: int, questions: int) -> tuple[Scene, list[Question]]:
    """One training scene and ``questions`` questions about it (distinct types where the scene allows), so
    that one pass of the vision encoder supervises several answers."""
    rng = _rng("train", index)
    first = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    scene = scene_for(first, rng)
    types = [t for t in rng.permutation(list(QUESTION_TYPES)) if t != first
             and (t != "position" or len(scene.objects) > 1)]
    return scene, [ask(scene, t, rng) for t in [first, *types][:questions]]


def _background(seed: int) -> np.ndarray:
    """Grey noise plus faint stripes of a random period and direction: every patch differs a little."""
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 160)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    stripes = 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    noise = rng.normal(0, 10, (IMAGE_SIZE, IMAGE_SIZE, 1))
    tint = rng.integers(-8, 9, size=3)  # slightly warm or cool, never a saturated colour
    pixels = base + stripes[..., None] + noise + tint
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, obj: Shape, fill: tuple[int, int, int] | int) -> None:
    box = (obj.left, obj.top, obj.left + obj.size - 1, obj.top + obj.size - 1)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``IMAGE_SIZE`` x ``IMAGE_SIZE`` pixels."""
    image = Image.fromarray(_background(scene.background_seed))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, COLORS[obj.color])
    return image


def object_mask(scene: Scene) -> np.ndarray:
    """(IMAGE_SIZE, IMAGE_SIZE) uint8: 0 on the background, ``i + 1`` where object ``i`` is drawn. Training
    uses it for a dense per-patch target; it is also the ground truth of which tokens an answer needs."""
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for i, obj in enumerate(scene.objects):
        _draw(draw, obj, i + 1)
    return np.asarray(mask)


def task_documents(count: int) -> list[dict]:
    """The lmms-eval documents of the first ``count`` test samples (the image is redrawn from ``index``)."""
    return [{"index": s.index, "question_type": s.question_type, "question": s.question, "answer": s.answer}
            for s in samples("test", count)]
