"""POPE (object hallucination) on COCO val2014: random / popular / adversarial, as LLaVA-1.5 evaluates it.

Files as LLaVA's scripts/v1_5/eval/pope.sh uses them (haotian-liu/LLaVA c121f04): the question file
``llava_pope_test.jsonl`` (``{"question_id", "image", "text", "category"}``, the text already ending in LLaVA's
"Answer the question using a single word or phrase."), POPE's label files ``coco_pope_{category}.json`` (JSON lines
with ``label`` yes/no) in ``--annotation-dir``, and the COCO val2014 images.

  python eval/pope.py run --model-path CKPT --question-file llava_pope_test.jsonl --image-dir val2014 \\
      --annotation-dir coco --output-dir runs/pope
  python eval/pope.py score --predictions answers.jsonl --question-file llava_pope_test.jsonl --annotation-dir coco

Scoring follows ``llava/eval/eval_pope.py``: an answer is "no" iff, in its text before the first ".", with "," removed
and split on spaces, a word is exactly "No", "not" or "no"; everything else is "yes". Per category: accuracy,
precision, recall, F1 and the yes-ratio of the answers (fractions, as LLaVA prints them). LLaVA pairs the k-th answer
of a category with the k-th line of its label file; we pair the k-th *question* of the category with it, and check
that both name the same image and question, so a shuffled or partial answers file cannot be mis-scored. On LLaVA's
well-formed files both pairings agree. A zero denominator (e.g. no "yes" answers) gives ``null`` for that metric
instead of LLaVA's crash.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic import COLORS, SHAPES
from .cli import Benchmark, with_instruction
from .io import EvalInputError, atomic_write_json, check_prediction_ids, load_jsonl
from .minisets import save_jpeg, scene_questions
from .runner import EvalItem, QuestionId, image_path
from .scoring import check_scorable, load_llava_answers

CATEGORIES = ("adversarial", "popular", "random")
POPE_SUFFIX = "\nAnswer the question using a single word or phrase."  # in LLaVA's question file already


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int
    image: str
    text: str
    category: str


def load_pope_questions(path: str | Path) -> list[PopeQuestion]:
    questions, seen = [], set()
    for i, r in enumerate(load_jsonl(path, "POPE question file"), start=1):
        ok = (type(r.get("question_id")) is int and isinstance(r.get("image"), str) and isinstance(r.get("text"), str)
              and r.get("category") in CATEGORIES)
        if not ok:
            raise EvalInputError(f"POPE question file {path}: line {i} needs int 'question_id', str 'image', str "
                                 f"'text' and 'category' in {CATEGORIES}, got {r!r:.200}; expected LLaVA's "
                                 "llava_pope_test.jsonl.")
        if r["question_id"] in seen:
            raise EvalInputError(f"POPE question file {path}: question_id {r['question_id']} appears twice (line {i}).")
        seen.add(r["question_id"])
        questions.append(PopeQuestion(r["question_id"], r["image"], r["text"], r["category"]))
    return questions


def load_pope_labels(questions: list[PopeQuestion], annotation_dir: Path) -> dict[int, str]:
    """{question_id: "yes"|"no"}: the k-th question of a category takes line k of coco_pope_<category>.json."""
    labels: dict[int, str] = {}
    for category in CATEGORIES:
        asked = [q for q in questions if q.category == category]
        if not asked:
            continue
        path = Path(annotation_dir) / f"coco_pope_{category}.json"
        rows = load_jsonl(path, "POPE label file")
        if len(rows) != len(asked):
            raise EvalInputError(f"POPE label file {path} has {len(rows)} labels but the question file has "
                                 f"{len(asked)} {category} questions; pass POPE's label files for this question file.")
        for k, (q, row) in enumerate(zip(asked, rows), start=1):
            if row.get("label") not in ("yes", "no") or row.get("image") != q.image or \
                    not q.text.startswith(str(row.get("text"))):
                raise EvalInputError(f"POPE label file {path}: line {k} ({row!r:.120}) does not label {category} "
                                     f"question {q.question_id} ({q.image}, {q.text!r:.60}); the files are out of "
                                     "order or from different sets.")
            labels[q.question_id] = row["label"]
    return labels


def parse_yes_no(text: str) -> str:
    """LLaVA's eval_pope.py rule (see the module docstring)."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def score_pope(answers: dict[int, str], questions: list[PopeQuestion], labels: dict[int, str],
               source: str = "answers") -> dict:
    """Per category: acc, precision, recall, f1, yes_ratio (fractions) and the confusion counts."""
    check_scorable(source, "POPE", len(questions))
    check_prediction_ids(answers, [q.question_id for q in questions], labels, source,
                         "Finish inference (re-run resumes) before scoring.")
    metrics = {}
    for category in CATEGORIES:
        pairs = [(parse_yes_no(answers[q.question_id]), labels[q.question_id]) for q in questions
                 if q.category == category]
        if not pairs:
            continue
        tp = sum(p == "yes" and g == "yes" for p, g in pairs)
        fp = sum(p == "yes" and g == "no" for p, g in pairs)
        tn = sum(p == "no" and g == "no" for p, g in pairs)
        fn = sum(p == "no" and g == "yes" for p, g in pairs)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (2 * precision * recall / (precision + recall) if precision is not None and recall is not None
              and precision + recall else None)
        metrics[category] = {"accuracy": (tp + tn) / len(pairs), "precision": precision, "recall": recall,
                             "f1": f1, "yes_ratio": (tp + fp) / len(pairs), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
                             "num_questions": len(pairs)}
    return metrics


# ------------------------------------------------------------------------------------------------ the CLI


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    required = command == "score"
    p.add_argument("--annotation-dir", type=Path, required=required, default=None,
                   help="POPE's label files coco_pope_{adversarial,popular,random}.json"
                        + ("" if required else " (omit to only write answers)"))
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="LLaVA's llava_pope_test.jsonl")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions = load_pope_questions(args.question_file)
    if args.annotation_dir is not None:  # fail now, not after generation
        load_pope_labels(questions, args.annotation_dir)
    if args.command != "run":
        return [EvalItem(q.question_id, Path(), q.text) for q in questions]
    return [EvalItem(q.question_id, image_path(args.image_dir, args.image_name_format, image=q.image),
                     with_instruction(q.text, args.instruction)) for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """LLaVA's answers file (what eval_pope.py reads), scored when the labels are given."""
    questions = [q for q in load_pope_questions(args.question_file) if q.question_id in answers]  # --limit
    records = [{"question_id": q.question_id, "prompt": q.text, "text": answers[q.question_id],
                "category": q.category} for q in questions]
    if args.annotation_dir is None:
        return records, None
    labels = load_pope_labels(load_pope_questions(args.question_file), args.annotation_dir)
    return records, score_pope(answers, questions, labels, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    questions = load_pope_questions(args.question_file)
    answers = {qid: r["text"] for qid, r in load_llava_answers(args.predictions, int).items()}
    metrics = score_pope(answers, questions, load_pope_labels(questions, args.annotation_dir),
                         source=str(args.predictions))
    return metrics, {"question_file": str(args.question_file), "annotation_dir": str(args.annotation_dir)}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Four yes/no object questions per category (half present, half absent) on COCO-named shapes images."""
    rng = random.Random(seed)
    questions, labels = [], {c: [] for c in CATEGORIES}
    scenes = scene_questions(12, seed)
    for i, item in enumerate(scenes):
        category = CATEGORIES[i // 4]
        image = f"COCO_val2014_{500 + i:012d}.jpg"
        save_jpeg(item.image, out / "val2014" / image)
        present = i % 2 == 0
        absent = sorted({f"{c} {s}" for c in COLORS for s in SHAPES} - item.present)
        name = rng.choice(sorted(item.present)) if present else rng.choice(absent)
        text = f"Is there {'an' if name[0] in 'aeiou' else 'a'} {name} in the image?"
        questions.append({"question_id": i + 1, "image": image, "text": text + POPE_SUFFIX, "category": category})
        labels[category].append({"question_id": len(labels[category]) + 1, "image": image, "text": text,
                                 "label": "yes" if present else "no"})
    qf = atomic_write_json(out / "llava_pope_test.jsonl", questions)
    for category, rows in labels.items():
        atomic_write_json(out / "coco" / f"coco_pope_{category}.json", rows, lines=True)
    return ["--question-file", str(qf), "--image-dir", str(out / "val2014"), "--annotation-dir", str(out / "coco")]


BENCHMARK = Benchmark(name="pope", final_file="answers.jsonl", default_image_name_format="{image}",
                      default_instruction="", add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
