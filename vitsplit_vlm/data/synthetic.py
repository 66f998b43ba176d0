"""Seeded synthetic VQA: coloured shapes on a plain background, in LLaVA, VQAv2 and GQA formats.

The embedded default dataset: no downloads, learnable by a tiny model on CPU, and scored by the same code
paths as the real benchmarks. Each image holds 1-4 shapes (circle/square/triangle, 6 colours), one per cell
of a 2x2 grid, each (colour, shape) at most once, so every question has one unambiguous one-word answer:

    color     What color is the circle?                       red
    shape     What shape is the blue object?                  square
    count     How many shapes are there?                      3
    exist     Is there a green triangle?                      yes / no (balanced)
    position  Is the red circle on the left or on the right?  left / right / top / bottom

    python -m vitsplit_vlm.data.synthetic --out DIR [--num-train 2000 --num-val 200 --image-size 84 --seed 0]
                                                    [--questions-per-image 5]

writes into DIR:

    images/                     train_NNNNN.jpg, val_NNNNN.jpg (JPEG, 4:4:4, quality 95)
    train.json                  LLaVA records, one per train image, a conversation of up to --questions-per-image
                                questions of distinct types, plus a few text-only rows
    val.json                    LLaVA records, one per val question, with its question_type; id == VQAv2
                                question_id == GQA qid
    stage1.json                 LLaVA records with plain captions ("a red circle and a blue square")
    vqav2/questions.json        VQAv2 val2014-style questions
    vqav2/annotations.json      VQAv2-style annotations (10 identical answers each)
    vqav2/val2014/              COCO_val2014_<image_id:012d>.jpg hard links to the val images
    gqa/testdev_balanced_questions.json   GQA-style questions; images are images/<imageId>.jpg
    stats.json                  counts, answer vocabulary and majority-class ("chance") accuracy per question type

Train and val images come from independent seeded streams, so val is held out and does not change with
``num_train``; the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA suffix
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("color", "shape", "count", "exist", "position")
BACKGROUND = (245, 245, 245)
ANSWER_TYPES = {"exist": "yes/no", "count": "number"}  # others: "other"
GQA_TYPES = {  # (structural, semantic, detailed)
    "color": ("query", "attr", "queryColor"),
    "shape": ("query", "cat", "queryShape"),
    "count": ("query", "global", "countShapes"),
    "exist": ("verify", "obj", "existAttrObj"),
    "position": ("choose", "rel", "choosePosition"),
}
_TEXT_ONLY = (
    ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"),
    ("Is a circle round?", "yes"),
    ("Is a square round?", "no"),
    ("What color do you get by mixing blue and yellow?", "green"),
    ("What color do you get by mixing red and yellow?", "orange"),
    ("What color do you get by mixing red and blue?", "purple"),
)


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    cell: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class QA:
    qtype: str
    question: str
    answer: str
    full_answer: str


def sample_scene(rng: random.Random) -> list[Shape]:
    combos = [(c, s) for c in COLORS for s in SHAPES]
    n = rng.randint(1, 4)
    cells = sorted(rng.sample(range(4), n))
    return [Shape(c, s, cell) for (c, s), cell in zip(rng.sample(combos, n), cells)]


def draw_scene(scene: list[Shape], size: int, rng: random.Random) -> Image.Image:
    """Shapes of radius 14-20% of the image, jittered inside their cell: large and separated at 56-112 px."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = size / 2
    for obj in scene:
        r = size * rng.uniform(0.14, 0.2)
        slack = max(0.0, half / 2 - r - 1)
        cx = (obj.cell % 2) * half + half / 2 + rng.uniform(-slack, slack)
        cy = (obj.cell // 2) * half + half / 2 + rng.uniform(-slack, slack)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return image


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def caption(scene: list[Shape]) -> str:
    """Objects in reading order (cells are sorted): 'a red circle, an orange square and a green triangle'."""
    names = [_a(obj.name) for obj in scene]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _question(qtype: str, scene: list[Shape], rng: random.Random) -> QA | None:
    """One question of ``qtype`` about ``scene``, or None if the scene has no unambiguous one."""
    if qtype == "color":
        unique = [o for o in scene if sum(p.shape == o.shape for p in scene) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return QA(qtype, f"What color is the {o.shape}?", o.color, f"The {o.shape} is {o.color}.")
    if qtype == "shape":
        unique = [o for o in scene if sum(p.color == o.color for p in scene) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return QA(qtype, f"What shape is the {o.color} object?", o.shape, f"The {o.color} object is a {o.shape}.")
    if qtype == "count":
        n = len(scene)
        return QA(qtype, "How many shapes are there?", str(n), f"There {'is' if n == 1 else 'are'} {n} shape{'' if n == 1 else 's'}.")
    if qtype == "exist":
        if rng.random() < 0.5:
            name = rng.choice(scene).name
            return QA(qtype, f"Is there {_a(name)}?", "yes", f"Yes, there is {_a(name)}.")
        present = {o.name for o in scene}
        name = rng.choice([f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present])
        return QA(qtype, f"Is there {_a(name)}?", "no", f"No, there is no {name}.")
    o = rng.choice(scene)
    if rng.random() < 0.5:
        side = "left" if o.cell % 2 == 0 else "right"
        return QA(qtype, f"Is the {o.name} on the left or on the right?", side, f"The {o.name} is on the {side}.")
    side = "top" if o.cell < 2 else "bottom"
    return QA(qtype, f"Is the {o.name} at the top or at the bottom?", side, f"The {o.name} is at the {side}.")


def sample_questions(scene: list[Shape], k: int, rng: random.Random) -> list[QA]:
    """Up to ``k`` questions of distinct types, none giving away another's answer (in a multi-turn record
    "What color is the circle?" -> "red" would answer a later "What shape is the red object?")."""
    out: list[QA] = []
    for qtype in rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)):
        qa = _question(qtype, scene, rng)
        if qa is None or any(_leaks(qa, other) or _leaks(other, qa) for other in out):
            continue
        out.append(qa)
        if len(out) == k:
            break
    return out


def _leaks(a: QA, b: QA) -> bool:
    return a.answer in b.question.rstrip("?").split()


def vqa_record(record_id: str, image: str | None, qas: list[tuple[str, str]]) -> dict[str, Any]:
    """A LLaVA-1.5 short-answer VQA record: '<image>\\n' on the first question, the suffix on every one."""
    turns = []
    for i, (question, answer) in enumerate(qas):
        prefix = "<image>\n" if i == 0 and image is not None else ""
        turns += [{"from": "human", "value": f"{prefix}{question}\n{SHORT_ANSWER_PROMPT}"}, {"from": "gpt", "value": answer}]
    record: dict[str, Any] = {"id": record_id}
    if image is not None:
        record["image"] = image
    record["conversations"] = turns
    return record


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra disk), or copy across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _save(image: Image.Image, path: Path) -> None:
    image.save(path, format="JPEG", quality=95, subsampling=0)


def _chance(train: list[QA], val: list[QA]) -> dict[str, Any]:
    """Majority training answer per question type, scored on val: the accuracy a blind model gets."""
    per_type: dict[str, Any] = {}
    correct = 0
    for qtype in QUESTION_TYPES:
        answers = Counter(qa.answer for qa in train if qa.qtype == qtype)
        val_answers = [qa.answer for qa in val if qa.qtype == qtype]
        if not answers or not val_answers:
            continue
        majority = min(answers, key=lambda a: (-answers[a], a))  # ties broken by name: deterministic
        hits = sum(a == majority for a in val_answers)
        correct += hits
        per_type[qtype] = {"majority_answer": majority, "chance_accuracy": hits / len(val_answers), "num_val": len(val_answers)}
    return {"question_types": per_type, "chance_accuracy": correct / max(1, len(val))}


def generate(out_dir: str | Path, num_train: int = 2000, num_val: int = 200, image_size: int = 84, seed: int = 0,
             questions_per_image: int = 5) -> dict[str, Path]:
    """Write the dataset (see module docstring); returns the paths by name."""
    if not 1 <= questions_per_image <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_image={questions_per_image}: must be 1-{len(QUESTION_TYPES)} (one per question type).")
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    train_rng = random.Random(f"vitsplit-synthetic-train-{seed}")
    val_rng = random.Random(f"vitsplit-synthetic-val-{seed}")

    train, stage1, train_qas = [], [], []
    for i in range(num_train):
        scene = sample_scene(train_rng)
        name = f"train_{i:05d}.jpg"
        _save(draw_scene(scene, image_size, train_rng), images / name)
        qas = sample_questions(scene, questions_per_image, train_rng)
        train_qas += qas
        train.append(vqa_record(f"train_{i:05d}", name, [(qa.question, qa.answer) for qa in qas]))
        stage1.append({"id": f"train_{i:05d}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": caption(scene)}]})
    num_text_only = max(1, num_train // 50)
    for i in range(num_text_only):
        train.append(vqa_record(f"text_{i:05d}", None, [train_rng.choice(_TEXT_ONLY)]))

    val, val_qas, vq_questions, vq_annotations, gqa = [], [], [], [], {}
    for i in range(num_val):
        scene = sample_scene(val_rng)
        image_id, stem = i + 1, f"val_{i:05d}"
        _save(draw_scene(scene, image_size, val_rng), images / f"{stem}.jpg")
        link_or_copy(images / f"{stem}.jpg", out / "vqav2" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
        for k, qa in enumerate(sample_questions(scene, 3, val_rng)):
            qid = image_id * 10 + k
            val_qas.append(qa)
            val.append({**vqa_record(str(qid), f"{stem}.jpg", [(qa.question, qa.answer)]), "question_type": qa.qtype})
            vq_questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            vq_annotations.append({
                "question_type": qa.qtype, "answer_type": ANSWER_TYPES.get(qa.qtype, "other"),
                "multiple_choice_answer": qa.answer, "image_id": image_id, "question_id": qid,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": j} for j in range(1, 11)],
            })
            structural, semantic, detailed = GQA_TYPES[qa.qtype]
            gqa[str(qid)] = {"imageId": stem, "question": qa.question, "answer": qa.answer, "fullAnswer": qa.full_answer,
                             "types": {"structural": structural, "semantic": semantic, "detailed": detailed}}

    info = {"description": "vitsplit_vlm synthetic shapes VQA", "seed": seed, "image_size": image_size,
            "questions_per_image": questions_per_image}
    paths = {
        "images": images,
        "train": write_json(out / "train.json", train),
        "val": write_json(out / "val.json", val),
        "stage1": write_json(out / "stage1.json", stage1),
        "vqav2_questions": write_json(out / "vqav2" / "questions.json", {
            "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
            "license": {}, "questions": vq_questions}),
        "vqav2_annotations": write_json(out / "vqav2" / "annotations.json", {
            "info": info, "data_type": "mscoco", "data_subtype": "val2014", "license": {}, "annotations": vq_annotations}),
        "vqav2_images": out / "vqav2" / "val2014",
        "gqa_questions": write_json(out / "gqa" / "testdev_balanced_questions.json", gqa),
        "gqa_images": images,
    }
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for qa in train_qas + val_qas:
        by_type[qa.qtype][qa.answer] += 1
    paths["stats"] = write_json(out / "stats.json", {
        **info, "num_train_images": num_train, "num_train_questions": len(train_qas), "num_text_only": num_text_only,
        "num_val_images": num_val, "num_val_questions": len(val_qas),
        "answer_vocab": sorted({qa.answer for qa in train_qas + val_qas}),
        "answer_counts": {t: dict(sorted(c.items())) for t, c in sorted(by_type.items())},
        **_chance(train_qas, val_qas),
        "files": {name: str(path.relative_to(out)) for name, path in paths.items()},
    })
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitsplit_vlm.data.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=2000, help="train images")
    parser.add_argument("--num-val", type=int, default=200, help="held-out val images (3 questions each)")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions-per-image", type=int, default=5, help="questions per train image (1-5, distinct types)")
    args = parser.parse_args(argv)
    paths = generate(args.out, args.num_train, args.num_val, args.image_size, args.seed, args.questions_per_image)
    stats = json.loads(paths["stats"].read_text())
    print(f"wrote {args.out}: {args.num_train} train images ({stats['num_train_questions']} questions), "
          f"{args.num_val} val images ({stats['num_val_questions']} questions); "
          f"chance accuracy {stats['chance_accuracy']:.3f}")


if __name__ == "__main__":
    main()
