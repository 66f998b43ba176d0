"""Seeded scenes for the benchmarks' mini-sets: the synthetic shapes data (``data.synthetic``) drawn as images with
one question each, so every benchmark writes a small set in its official format that the demo checkpoint, trained
on the same shapes, can answer better than chance."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.synthetic import COLORS, SHAPES, QA, draw_scene, sample_questions, sample_scene

IMAGE_SIZE = 84  # the demo's training resolution


@dataclass(frozen=True)
class SceneQA:
    image: Image.Image
    qa: QA
    present: frozenset[str]  # "red circle", ... as drawn


def scene_questions(n: int, seed: int, qtypes: tuple[str, ...] | None = None) -> Iterator[SceneQA]:
    """``n`` scenes, each with one question (of ``qtypes`` if given), reproducible from ``seed``."""
    rng = random.Random(seed)
    made = 0
    while made < n:
        scene = sample_scene(rng)
        image = draw_scene(scene, IMAGE_SIZE, rng)
        qas = [qa for qa in sample_questions(scene, 5, rng) if qtypes is None or qa.qtype in qtypes]
        if qas:
            made += 1
            yield SceneQA(image, rng.choice(qas), frozenset(o.name for o in scene))


def options_for(qa: QA, rng: random.Random, k: int) -> tuple[list[str], int]:
    """``k`` answer options (the right one among same-kind distractors) and the index of the right one."""
    pool = {"color": list(COLORS), "shape": list(SHAPES), "count": ["1", "2", "3", "4"],
            "exist": ["yes", "no"], "position": ["left", "right", "top", "bottom"]}[qa.qtype]
    wrong = [a for a in pool if a != qa.answer]
    options = rng.sample(wrong, min(k - 1, len(wrong))) + [qa.answer]
    rng.shuffle(options)
    return options, options.index(qa.answer)


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)
