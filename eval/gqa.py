"""GQA evaluation (official question JSON in, official predictions file out, exact-match accuracy).

  python eval/gqa.py run --model-path CKPT --question-file testdev_balanced_questions.json \\
      --image-dir images --output-dir runs/gqa_testdev
  # -> runs/gqa_testdev/predictions.json ([{"questionId", "prediction"}]) and summary.json
  python eval/gqa.py score --predictions predictions.json --question-file testdev_balanced_questions.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitsplit_vlm.metrics import gqa
from vitsplit_vlm.metrics.cli import Benchmark, main
from vitsplit_vlm.metrics.runner import EvalItem, QuestionId, image_path


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="official GQA questions with answers")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions = gqa.load_gqa_questions(args.question_file)
    if args.command != "run":  # merge only needs the ids
        return [EvalItem(q.question_id, Path(), q.question) for q in questions]
    return [EvalItem(q.question_id, image_path(args.image_dir, args.image_name_format, image_id=q.image_id),
                     q.question) for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """Predictions are written normalised (lowercase, no trailing period) so the official eval.py, which
    compares strings exactly, scores them as we do. Scored only when the file has ground truth."""
    preds = {qid: gqa.normalize_gqa_answer(a) for qid, a in answers.items()}
    records = [{"questionId": qid, "prediction": p} for qid, p in preds.items()]
    asked = [q for q in gqa.load_gqa_questions(args.question_file) if q.question_id in preds]  # --limit
    if any(q.answer is None for q in asked):
        return records, None
    return records, gqa.score_gqa(preds, asked, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    preds = gqa.load_gqa_predictions(args.predictions)
    metrics = gqa.score_gqa(preds, gqa.load_gqa_questions(args.question_file), source=str(args.predictions))
    return metrics, {"question_file": str(args.question_file)}


GQA = Benchmark(name="gqa", final_file="predictions.json", default_image_name_format="{image_id}.jpg",
                add_args=add_args, load_items=load_items, finalize=finalize, score_file=score_file)

if __name__ == "__main__":
    sys.exit(main(GQA))
