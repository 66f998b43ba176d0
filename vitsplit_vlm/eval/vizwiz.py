"""VizWiz-VQA: val scored with the official VQA accuracy (unanswerable questions included), test written as the
submission file of the official server.

Files: VizWiz's own ``val.json`` / ``test.json`` (a list of ``{"image", "question", "answers": [10 x {"answer",
"answer_confidence"}], "answer_type", "answerable"}``, no answers in test) and the image folders. The prompt is
LLaVA-1.5's (haotian-liu/LLaVA c121f04, ``llava_test.jsonl`` of scripts/v1_5/eval/vizwiz.sh): the question, then
"When the provided information is insufficient, respond with 'Unanswerable'." and "Answer the question using a single
word or phrase." on their own lines.

  python eval/vizwiz.py run --model-path CKPT --question-file val.json --image-dir val --output-dir runs/vizwiz_val
  python eval/vizwiz.py run --model-path CKPT --question-file test.json --image-dir test --output-dir runs/vizwiz_test
  python eval/vizwiz.py score --predictions submission.json --question-file val.json

``submission.json`` is ``[{"image", "answer"}]`` with officially normalised answers (as LLaVA's
convert_vizwiz_for_submission.py writes it). The accuracy is ``vqa_accuracy`` (GT-Vision-Lab/VQA a013f00), overall,
per answer type and for answerable / unanswerable questions.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from .cli import SHORT_ANSWER, Benchmark, with_instruction
from .io import EvalInputError, atomic_write_json, check_prediction_ids, load_json, load_prediction_list
from .minisets import save_jpeg, scene_questions
from .runner import EvalItem, QuestionId, image_path
from .scoring import check_scorable, grouped_percent, percent
from .vqa_accuracy import normalize_answer, vqa_accuracy

INSTRUCTION = f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER}"


@dataclass(frozen=True)
class VizWizQuestion:
    image: str  # also the question id: VizWiz has one question per image
    question: str
    answers: list[str] | None  # None in test.json
    answer_type: str | None
    answerable: int | None


def load_vizwiz(path: str | Path) -> list[VizWizQuestion]:
    data = load_json(path, "VizWiz annotation file")
    if not isinstance(data, list):
        raise EvalInputError(f"VizWiz annotation file {path} must be a JSON list of questions (VizWiz's val.json "
                             f"or test.json), got {type(data).__name__}.")
    out, seen = [], set()
    for i, q in enumerate(data):
        answers = q.get("answers") if isinstance(q, dict) else None
        ok = (isinstance(q, dict) and isinstance(q.get("image"), str) and isinstance(q.get("question"), str)
              and (answers is None or (isinstance(answers, list) and len(answers) >= 2 and all(
                  isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers))))
        if not ok:
            raise EvalInputError(f"VizWiz annotation file {path}: [{i}] needs str 'image', str 'question' and "
                                 f"optionally the human 'answers' ({{'answer': str}}, 10), got {q!r:.200}.")
        if q["image"] in seen:
            raise EvalInputError(f"VizWiz annotation file {path}: image {q['image']} appears twice ([{i}]).")
        seen.add(q["image"])
        out.append(VizWizQuestion(q["image"], q["question"], None if answers is None else [a["answer"] for a in answers],
                                  q.get("answer_type"), q.get("answerable")))
    return out


def score_vizwiz(predictions: dict[str, str], questions: list[VizWizQuestion], source: str = "predictions") -> dict:
    check_scorable(source, "VizWiz", len(questions), [q.image for q in questions if q.answers is None],
                   "only val.json can be scored, test.json goes to the official server.")
    check_prediction_ids(predictions, [q.image for q in questions], [q.image for q in questions], source,
                         "Finish inference (re-run resumes) before scoring.")
    scores = [(q, vqa_accuracy(predictions[q.image], q.answers)) for q in questions]
    return {"overall": percent([s for _, s in scores]),
            "perAnswerType": grouped_percent((str(q.answer_type), s) for q, s in scores),
            "answerable": grouped_percent(("answerable" if q.answerable else "unanswerable", s) for q, s in scores),
            "num_questions": len(scores)}


# ------------------------------------------------------------------------------------------------ the CLI


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="VizWiz's val.json (with answers)")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions = load_vizwiz(args.question_file)
    if args.command != "run":
        return [EvalItem(q.image, Path(), q.question) for q in questions]
    return [EvalItem(q.image, image_path(args.image_dir, args.image_name_format, image=q.image),
                     with_instruction(q.question, args.instruction)) for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """Submission answers are officially normalised; the val score is computed on what is submitted."""
    submitted = {qid: normalize_answer(a) for qid, a in answers.items()}
    records = [{"image": qid, "answer": a} for qid, a in submitted.items()]
    asked = [q for q in load_vizwiz(args.question_file) if q.image in submitted]  # --limit
    if any(q.answers is None for q in asked):
        return records, None
    return records, score_vizwiz(submitted, asked, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    preds = load_prediction_list(args.predictions, "VizWiz submission file", "image", str, "answer")
    return score_vizwiz(preds, load_vizwiz(args.question_file), source=str(args.predictions)), {
        "annotation_file": str(args.question_file)}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Shapes questions with ten human answers (some disagreeing) plus unanswerable ones, in VizWiz's val format."""
    rng = random.Random(seed)
    records = []
    for i, item in enumerate(scene_questions(12, seed)):
        image = f"VizWiz_val_{i:08d}.jpg"
        save_jpeg(item.image, out / "val" / image)
        if i % 4 == 3:  # LLaVA's instruction asks for "Unanswerable" here
            question, humans, atype, answerable = "What does the label on the box say?", ["unanswerable"] * 10, \
                "unanswerable", 0
        else:
            question, humans, answerable = item.qa.question, [item.qa.answer] * 10, 1
            atype = {"exist": "yes/no", "count": "number"}.get(item.qa.qtype, "other")
            for j in rng.sample(range(10), rng.choice([0, 3])):
                humans[j] = rng.choice(["unanswerable", item.qa.answer.capitalize()])
        records.append({"image": image, "question": question, "answer_type": atype, "answerable": answerable,
                        "answers": [{"answer": a, "answer_confidence": "yes"} for a in humans]})
    qf = atomic_write_json(out / "val.json", records)
    return ["--question-file", str(qf), "--image-dir", str(out / "val")]


BENCHMARK = Benchmark(name="vizwiz", final_file="submission.json", default_image_name_format="{image}",
                      default_instruction=INSTRUCTION, add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
