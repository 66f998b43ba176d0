"""GQA: exact-match accuracy with the official breakdowns, over the official file formats.

The official GQA eval.py compares the prediction string to the gold answer exactly, over the questions marked
``isBalanced``, and reports accuracy per structural type (query -> "open", everything else -> "binary") and per
semantic type. Generated answers need light normalisation first (LLaVA lowercases and strips the trailing period
before calling eval.py); we apply the same normalisation to both sides so a stray capital or period never counts.

  python eval/gqa.py run --model-path CKPT --question-file testdev_balanced_questions.json \\
      --image-dir images --output-dir runs/gqa_testdev
  # -> runs/gqa_testdev/predictions.json ([{"questionId", "prediction"}]) and summary.json
  python eval/gqa.py score --predictions predictions.json --question-file testdev_balanced_questions.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic import GQA_TYPES
from .cli import SHORT_ANSWER, Benchmark, with_instruction
from .io import EvalInputError, atomic_write_json, check_prediction_ids, load_json, load_prediction_list
from .minisets import save_jpeg, scene_questions
from .runner import EvalItem, QuestionId, image_path


def normalize_gqa_answer(answer: str) -> str:
    """Lowercase, collapse whitespace, drop trailing periods ("Yes." -> "yes", " The  Cat " -> "the cat")."""
    return " ".join(answer.lower().split()).rstrip(".").rstrip()


@dataclass(frozen=True)
class GQAQuestion:
    question_id: str
    image_id: str
    question: str
    answer: str | None  # None in the test / challenge files
    structural: str | None
    semantic: str | None
    is_balanced: bool


def load_gqa_questions(path: str | Path) -> list[GQAQuestion]:
    """Official ``{questionId: {...}}`` question file -> questions in file order."""
    data = load_json(path, "GQA question file")
    if not isinstance(data, dict):
        raise EvalInputError(f"GQA question file {path} must be a JSON object {{questionId: question}}, "
                             f"got {type(data).__name__}; expected e.g. testdev_balanced_questions.json.")
    questions = []
    for qid, q in data.items():
        types = q.get("types") if isinstance(q, dict) else None
        ok = (isinstance(q, dict) and isinstance(q.get("imageId"), str) and isinstance(q.get("question"), str)
              and isinstance(q.get("answer", ""), str) and (types is None or isinstance(types, dict)))
        if not ok:
            raise EvalInputError(f"GQA question file {path}: question {qid!r} needs str 'imageId', str 'question' "
                                 f"and optionally str 'answer' and a 'types' object, got {q!r:.200}.")
        types = types or {}
        questions.append(GQAQuestion(qid, q["imageId"], q["question"], q.get("answer"), types.get("structural"),
                                     types.get("semantic"), bool(q.get("isBalanced", True))))
    return questions


def load_gqa_predictions(path: str | Path) -> dict[str, str]:
    """Official ``[{"questionId": str, "prediction": str}, ...]`` file -> {questionId: prediction}."""
    return load_prediction_list(path, "GQA predictions file", "questionId", str, "prediction")


def score_gqa(predictions: Mapping[str, str], questions: list[GQAQuestion], source: str = "predictions") -> dict:
    """Accuracy (percent, 2 decimals) over the balanced questions, overall, binary/open, per structural and
    semantic type, with the question count of every group."""
    scored = [q for q in questions if q.is_balanced]
    if not scored:
        raise EvalInputError(f"{source}: no balanced questions to score; pass a non-empty GQA question file.")
    unanswerable = [q.question_id for q in scored if q.answer is None or not q.structural or not q.semantic]
    if unanswerable:
        raise EvalInputError(f"{len(unanswerable)} questions have no 'answer' or 'types' (e.g. {unanswerable[:5]}); "
                             "only files with ground truth (e.g. testdev_balanced_questions.json) can be scored.")
    check_prediction_ids(predictions, [q.question_id for q in scored], [q.question_id for q in questions], source,
                         "Finish inference (re-run resumes) before scoring.")
    groups: dict[str, dict[str, list[float]]] = {"structural": defaultdict(list), "semantic": defaultdict(list),
                                                 "answer": defaultdict(list)}
    overall = []
    for q in scored:
        score = float(normalize_gqa_answer(predictions[q.question_id]) == normalize_gqa_answer(q.answer))
        overall.append(score)
        groups["structural"][q.structural].append(score)
        groups["semantic"][q.semantic].append(score)
        groups["answer"]["open" if q.structural == "query" else "binary"].append(score)

    def pct(xs: list[float]) -> float:
        return round(100 * sum(xs) / len(xs), 2) if xs else 0.0  # an empty binary/open group

    return {
        "accuracy": pct(overall),
        "binary": pct(groups["answer"]["binary"]),
        "open": pct(groups["answer"]["open"]),
        "accuracyPerStructuralType": {k: pct(v) for k, v in sorted(groups["structural"].items())},
        "accuracyPerSemanticType": {k: pct(v) for k, v in sorted(groups["semantic"].items())},
        "countPerStructuralType": {k: len(v) for k, v in sorted(groups["structural"].items())},
        "countPerSemanticType": {k: len(v) for k, v in sorted(groups["semantic"].items())},
        "num_questions": len(overall),
    }


# ------------------------------------------------------------------------------------------------ the CLI


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="official GQA questions with answers")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions = load_gqa_questions(args.question_file)
    if args.command != "run":  # merge only needs the ids
        return [EvalItem(q.question_id, Path(), q.question) for q in questions]
    return [EvalItem(q.question_id, image_path(args.image_dir, args.image_name_format, image_id=q.image_id),
                     with_instruction(q.question, args.instruction)) for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """Predictions are written normalised (lowercase, no trailing period) so the official eval.py, which
    compares strings exactly, scores them as we do. Scored only when the file has ground truth."""
    preds = {qid: normalize_gqa_answer(a) for qid, a in answers.items()}
    records = [{"questionId": qid, "prediction": p} for qid, p in preds.items()]
    asked = [q for q in load_gqa_questions(args.question_file) if q.question_id in preds]  # --limit
    if any(q.answer is None for q in asked):
        return records, None
    return records, score_gqa(preds, asked, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    preds = load_gqa_predictions(args.predictions)
    metrics = score_gqa(preds, load_gqa_questions(args.question_file), source=str(args.predictions))
    return metrics, {"question_file": str(args.question_file)}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Shapes questions in the official balanced question format, with GQA's structural / semantic types."""
    questions = {}
    for i, item in enumerate(scene_questions(12, seed)):
        structural, semantic, detailed = GQA_TYPES[item.qa.qtype]
        save_jpeg(item.image, out / "images" / f"n{i}.jpg")
        questions[f"{20000 + i}"] = {"imageId": f"n{i}", "question": item.qa.question, "answer": item.qa.answer,
                                     "fullAnswer": item.qa.full_answer, "isBalanced": True,
                                     "types": {"structural": structural, "semantic": semantic, "detailed": detailed}}
    qf = atomic_write_json(out / "testdev_balanced_questions.json", questions)
    return ["--question-file", str(qf), "--image-dir", str(out / "images")]


BENCHMARK = Benchmark(name="gqa", final_file="predictions.json", default_image_name_format="{image_id}.jpg",
                      default_instruction=SHORT_ANSWER, add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
