"""VQAv2 evaluation (official question / annotation / submission formats, official accuracy).

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
import sys
from pathlib import Path

from vitsplit_vlm.metrics import vqa
from vitsplit_vlm.metrics.cli import Benchmark, main
from vitsplit_vlm.metrics.io import EvalInputError
from vitsplit_vlm.metrics.runner import EvalItem, QuestionId, image_path

DEFAULT_IMAGE_NAME_FORMAT = "COCO_{split}_{image_id:012d}.jpg"
_annotations = functools.cache(vqa.load_vqav2_annotations)  # run validates early, finalize scores: load once


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
    questions, subtype = vqa.load_vqav2_questions(args.question_file)
    if args.annotation_file is not None:  # fail now, not after hours of generation
        anns = _annotations(args.annotation_file)
        missing = [q.question_id for q in questions if q.question_id not in anns]
        if missing:
            raise EvalInputError(f"{len(missing)} questions of {args.question_file} are not in "
                                 f"{args.annotation_file} (e.g. {missing[:5]}); pass the annotations of the "
                                 "same split.")
    if args.submission_question_file is not None:
        everyone = {q.question_id for q in vqa.load_vqav2_questions(args.submission_question_file)[0]}
        extra = [q.question_id for q in questions if q.question_id not in everyone]
        if extra:
            raise EvalInputError(f"{len(extra)} questions of {args.question_file} are not in --submission-question-"
                                 f"file {args.submission_question_file} (e.g. {extra[:5]}); pass the matching file.")
    if args.command != "run":  # merge only needs the ids
        return [EvalItem(q.question_id, Path(), q.question) for q in questions]
    split = vqa.image_split(subtype, args.image_split)
    if split is None and "{split" in args.image_name_format:
        raise EvalInputError(f"{args.question_file} has no 'data_subtype' to name images by; "
                             "pass --image-split (e.g. val2014).")
    return [EvalItem(q.question_id, image_path(args.image_dir, args.image_name_format, split=split,
                                               image_id=q.image_id), q.question) for q in questions]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """Submission answers are officially normalised (as LLaVA does). The normaliser is idempotent (for answers
    with at most 32 periods), so the server's own normalisation leaves them unchanged and the local score
    equals the server's."""
    submitted = {qid: vqa.normalize_answer(a) for qid, a in answers.items()}
    records = [{"question_id": qid, "answer": a} for qid, a in submitted.items()]
    if args.submission_question_file is not None:
        everyone, _ = vqa.load_vqav2_questions(args.submission_question_file)
        records += [{"question_id": q.question_id, "answer": ""} for q in everyone if q.question_id not in answers]
    if args.annotation_file is None:
        return records, None
    return records, vqa.score_vqav2(submitted, _annotations(args.annotation_file), question_ids=list(submitted),
                                    source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    preds = vqa.load_vqav2_predictions(args.predictions)
    anns = vqa.load_vqav2_annotations(args.annotation_file)
    qids = None if args.question_file is None else [q.question_id for q in
                                                     vqa.load_vqav2_questions(args.question_file)[0]]
    metrics = vqa.score_vqav2(preds, anns, question_ids=qids, source=str(args.predictions))
    return metrics, {"annotation_file": str(args.annotation_file),
                     "question_file": None if args.question_file is None else str(args.question_file)}


VQAV2 = Benchmark(name="vqav2", final_file="submission.json", default_image_name_format=DEFAULT_IMAGE_NAME_FORMAT,
                  add_args=add_args, load_items=load_items, finalize=finalize, score_file=score_file)

if __name__ == "__main__":
    sys.exit(main(VQAV2))
