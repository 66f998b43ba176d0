"""The web page's example images and questions: scenes of the built-in synthetic shapes task, shipped as package data.

Why this task: the embedded demo checkpoint (`vitsplit-train` with no arguments) learned it, so its answers to these
examples mean something. The PNGs are drawn by `draw_examples` (re-run `python -m vitsplit_vlm.demo_examples` after
changing a scene; a test checks the shipped files match what it draws).
"""
from __future__ import annotations

import random
from pathlib import Path

from .data.synthetic import Shape, draw_scene

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
IMAGE_SIZE = 168  # twice the demo's 84 px: legible on the page, a few kB each

# file name -> (scene, question)
SCENES: dict[str, tuple[list[Shape], str]] = {
    "two_shapes.png": ([Shape("red", "circle", 0), Shape("blue", "square", 3)], "What color is the circle?"),
    "three_shapes.png": (
        [Shape("green", "triangle", 0), Shape("yellow", "circle", 1), Shape("purple", "square", 2)],
        "How many shapes are there?",
    ),
    "one_shape.png": ([Shape("orange", "triangle", 1)], "Is the orange triangle on the left or on the right?"),
}


def draw_examples(out_dir: str | Path = EXAMPLES_DIR, seed: int = 0) -> list[Path]:
    """Draw every scene into `out_dir` as PNG (lossless, so the shipped files can be compared pixel for pixel)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for name, (scene, _) in SCENES.items():
        draw_scene(scene, IMAGE_SIZE, rng).save(out_dir / name, format="PNG", optimize=True)
        paths.append(out_dir / name)
    return paths


def examples() -> list[list[str]]:
    """[[image path, question], ...] for `gr.Examples`, from the shipped files."""
    return [[str(EXAMPLES_DIR / name), question] for name, (_, question) in SCENES.items()]


if __name__ == "__main__":
    for path in draw_examples():
        print(path)
