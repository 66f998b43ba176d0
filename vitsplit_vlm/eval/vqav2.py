"""VQAv2: official question / annotation / submission formats, scored with the official VQA accuracy
(``vqa_accuracy``, GT-Vision-Lab/VQA a013f00).

  # val: answer, then score with the official VQA accuracy
  python eval/vqav2.py run --model-path CKPT --question-file v2_OpenEnded_mscoco_val2014_questions.json \\
      --image-dir val2014 --annotation-file v2_mscoco_val2014_annotations.json --output-dir runs/vqav2_val
  # test-dev on 8 GPUs -> runs/vqav2_testdev/submission.json for EvalAI
  torchrun --nproc-per-node 8 eval/vqav2.py run --model-path CKPT \\
      --question-file v2_OpenEnded_mscoco_test-dev2015_questions.json --image-dir test2015 \\
      --submission-question-file v2_OpenEnded_mscoco_test2015_questions.json --output-dir runs/vqav2_testdev
  # score an existing submission-format file
  python eval/vqav2.py score --predictions answers.json --annotation-file v2_mscoco_val2014_annotations.json
"""

from __future__ import annotations

import argparse
import functools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .cli import SHORT_ANSWER, Benchmark, with_instruction
from .io import EvalInputError, atomic_write_json, check_prediction_ids, load_json, load_prediction_list
from .minisets import save_jpeg, scene_questions
from .runner import EvalItem, QuestionId, image_path
from .vqa_accuracy import normalize_answer, vqa_accuracy

@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    image_id: int
    question: str


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_vqav2_questions(path: str | Path) -> tuple[list[VQAQuestion], str | None]:
    """Official question file -> (questions in file order, data_subtype or None)."""
    data = load_json(path, "VQAv2 question file")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise EvalInputError(
            f"VQAv2 question file {path} has no 'questions' list; expected the official "
            "v2_OpenEnded_mscoco_<split>_questions.json format."
        )
    questions, seen = [], set()
    for i, q in enumerate(data["questions"]):
        if not (isinstance(q, dict) and _is_int(q.get("question_id")) and _is_int(q.get("image_id"))
                and isinstance(q.get("question"), str)):
            raise EvalInputError(
                f"VQAv2 question file {path}: questions[{i}] needs int 'question_id', int 'image_id' and "
                f"str 'question', got {q!r:.200}. Fix or regenerate the file."
            )
        if q["question_id"] in seen:
            raise EvalInputError(f"VQAv2 question file {path}: question_id {q['question_id']} appears twice "
                                 f"(questions[{i}]). Remove the duplicate.")
        seen.add(q["question_id"])
        questions.append(VQAQuestion(q["question_id"], q["image_id"], q["question"]))
    subtype = data.get("data_subtype")
    return questions, subtype if isinstance(subtype, str) else None


def load_vqav2_annotations(path: str | Path) -> dict[int, dict]:
    """Official annotation file -> {question_id: annotation}, checked for the fields the scorer reads."""
    data = load_json(path, "VQAv2 annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvalInputError(
            f"VQAv2 annotation file {path} has no 'annotations' list; expected the official "
            "v2_mscoco_<split>_annotations.json format."
        )
    anns: dict[int, dict] = {}
    for i, a in enumerate(data["annotations"]):
        ok = (isinstance(a, dict) and _is_int(a.get("question_id")) and isinstance(a.get("question_type"), str)
              and isinstance(a.get("answer_type"), str) and isinstance(a.get("answers"), list)
              and len(a["answers"]) >= 2
              and all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in a["answers"]))
        if not ok:
            raise EvalInputError(
                f"VQAv2 annotation file {path}: annotations[{i}] needs int 'question_id', str 'question_type', "
                f"str 'answer_type' and an 'answers' list of the human {{'answer': str}} (10 in VQAv2), "
                f"got {a!r:.200}."
            )
        if a["question_id"] in anns:
            raise EvalInputError(f"VQAv2 annotation file {path}: question_id {a['question_id']} is annotated "
                                 f"twice (annotations[{i}]). Remove the duplicate.")
        anns[a["question_id"]] = a
    return anns


def load_vqav2_predictions(path: str | Path) -> dict[int, str]:
    """Submission-format file ``[{"question_id": int, "answer": str}, ...]`` -> {question_id: answer}."""
    return load_prediction_list(path, "VQAv2 predictions file", "question_id", int, "answer")


def score_vqav2(
    predictions: Mapping[int, str],
    annotations: Mapping[int, dict],
    question_ids: Iterable[int] | None = None,
    source: str = "predictions",
) -> dict:
    """Official VQA accuracy (percent, 2 decimals as the official script prints) overall, per answer type and
    per question type. Scores ``question_ids`` (default: every annotated question, as the official script)."""
    wanted = list(annotations) if question_ids is None else list(question_ids)
    if not wanted:
        raise EvalInputError(f"{source}: no questions to score; pass a non-empty annotation / question file.")
    not_annotated = [q for q in wanted if q not in annotations]
    if not_annotated:
        raise EvalInputError(f"{len(not_annotated)} questions have no annotation (e.g. {not_annotated[:5]}); "
                             "pass the annotation file of the same split as the questions.")
    check_prediction_ids(predictions, wanted, annotations, source,
                         "Finish inference (re-run resumes), or score only the asked questions with --question-file.")
    overall: list[float] = []
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question_type: dict[str, list[float]] = defaultdict(list)
    for qid in wanted:
        ann = annotations[qid]
        acc = vqa_accuracy(predictions[qid], [a["answer"] for a in ann["answers"]])
        overall.append(acc)
        per_answer_type[ann["answer_type"]].append(acc)
        per_question_type[ann["question_type"]].append(acc)

    def pct(xs: list[float]) -> float:
        return round(100 * sum(xs) / len(xs), 2)

    return {
        "overall": pct(overall),
        "perAnswerType": {k: pct(v) for k, v in sorted(per_answer_type.items())},
        "perQuestionType": {k: pct(v) for k, v in sorted(per_question_type.items())},
        "num_questions": len(overall),
    }


def image_split(data_subtype: str | None, override: str | None) -> str | None:
    """COCO image-name split for a question file: test-dev questions use the test2015 images."""
    if override:
        return override
    if data_subtype and data_subtype.startswith("test-dev"):
        return "test" + data_subtype[len("test-dev"):]
    return data_subtype


# ------------------------------------------------------------------------------------------------ the CLI


DEFAULT_IMAGE_NAME_FORMAT = "COCO_{split}_{image_id:012d}.jpg"
_annotations = functools.cache(load_vqav2_annotations)  # run validates early, finalize scores: load once


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command in ("run", "merge"):
        p.add_argument("--annotation-file", type=Path, default=None,
                       help="official annotations of the same split: score the answers (omit for test-dev)")
        p.add_argument("--submission-question-file", type=Path, default=None,
                       help="questions the submission must cover (EvalAI wants all of test2015 for test-dev); "
                            "those not answered get an empty answer")
    if command == "run":
        p.add_argument("--image-split", default=None,
                       help="{split} in image names (default: the question file's data_subtype, "
                            "test-dev2015 -> test2015)")
    if command == "score":
        p.add_argument("--annotation-file", type=Path, required=True)
        p.add_argument("--question-file", type=Path, default=None,
                       help="score only these questions (default: every annotated question, as the official script)")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions, subtype = load_vqav2_questions(args.question_file)
    if args.annotation_file is not None:  # fail now, not after hours of generation
        anns = _annotations(args.annotation_file)
        missing = [q.question_id for q in questions if q.question_id not in anns]
        if missing:
            raise EvalInputError(f"{len(missing)} questions of {args.question_file} are not in "
                                 f"{args.annotation_file} (e.g. {missing[:5]}); pass the annotations of the "
                                 "same split.")
    if args.submission_question_file is not None:
        everyone = {q.question_id for q in load_vqav2_questions(args.submission_question_file)[0]}
        extra = [q.question_id for q in questions if q.question_id not in everyone]
        if extra:
            raise EvalInputError(f"{len(extra)} questions of {args.question_file} are not in --submission-question-"
                                 f"file {args.submission_question_file} (e.g. {extra[:5]}); pass the matching file.")
    if args.command != "run":  # merge only needs the ids
        return [EvalItem(q.question_id, Path(), q.question) for q in questions]
    split = image_split(subtype, args.image_split)
    if split is None and "{split" in args.image_name_format:
        raise EvalInputError(f"{args.question_file} has no 'data_subtype' to name images by; "
                             "pass --image-split (e.g. val2014).")
    return [EvalItem(q.question_id, image_path(args.image_dir, args.image_name_format, split=split,
                                               image_id=q.image_id), with_instruction(q.question, args.instruction))
            for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """Submission answers are officially normalised (as LLaVA does before submitting); the local score is computed
    on those submitted strings, exactly what the server receives."""
    submitted = {qid: normalize_answer(a) for qid, a in answers.items()}
    records = [{"question_id": qid, "answer": a} for qid, a in submitted.items()]
    if args.submission_question_file is not None:
        everyone, _ = load_vqav2_questions(args.submission_question_file)
        records += [{"question_id": q.question_id, "answer": ""} for q in everyone if q.question_id not in answers]
    if args.annotation_file is None:
        return records, None
    return records, score_vqav2(submitted, _annotations(args.annotation_file), question_ids=list(submitted),
                                    source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    preds = load_vqav2_predictions(args.predictions)
    anns = load_vqav2_annotations(args.annotation_file)
    qids = None if args.question_file is None else [q.question_id for q in
                                                     load_vqav2_questions(args.question_file)[0]]
    metrics = score_vqav2(preds, anns, question_ids=qids, source=str(args.predictions))
    return metrics, {"annotation_file": str(args.annotation_file),
                     "question_file": None if args.question_file is None else str(args.question_file)}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Shapes questions in the official VQAv2 val formats (COCO-named images), ten human answers each, some of them
    variants of the right one, so both branches of the official normalisation are exercised."""
    rng = random.Random(seed)
    questions, annotations = [], []
    for i, item in enumerate(scene_questions(12, seed)):
        image_id, qid = 100 + i, 100_000 + i
        save_jpeg(item.image, out / "val2014" / DEFAULT_IMAGE_NAME_FORMAT.format(split="val2014", image_id=image_id))
        humans = [item.qa.answer] * 10
        for j in rng.sample(range(10), rng.choice([0, 0, 2, 4])):
            humans[j] = rng.choice([item.qa.answer.capitalize(), f"{item.qa.answer}.", "unsure"])
        questions.append({"image_id": image_id, "question": item.qa.question, "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "question_type": item.qa.qtype,
                            "answer_type": {"exist": "yes/no", "count": "number"}.get(item.qa.qtype, "other"),
                            "multiple_choice_answer": item.qa.answer,
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                        for j, a in enumerate(humans)]})
    qf = atomic_write_json(out / "v2_OpenEnded_mscoco_val2014_questions.json",
                           {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
                            "questions": questions})
    af = atomic_write_json(out / "v2_mscoco_val2014_annotations.json",
                           {"data_subtype": "val2014", "annotations": annotations})
    return ["--question-file", str(qf), "--image-dir", str(out / "val2014"), "--annotation-file", str(af)]


BENCHMARK = Benchmark(name="vqav2", final_file="submission.json", default_image_name_format=DEFAULT_IMAGE_NAME_FORMAT,
                      default_instruction=SHORT_ANSWER, add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
