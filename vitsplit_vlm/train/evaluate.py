"""Held-out evaluation after training: greedy answers to single-question LLaVA records, scored by exact match.

Prompts are rendered by the processor with the template the model was trained with, from the human turn as the
training data layer reads it (`record_messages`), so the score measures what training taught, not a prompt
mismatch. Answers are compared after the official VQA normalisation (`vitsplit_vlm.eval.vqa_accuracy`).

Every val file gets a breakdown by question type and a blind baseline beside each figure: a record's type is its
`question_type` field when it has one (the synthetic and easy-vqa converters write it), else VQAv2's answer type
of its reference answer (yes/no, number, other). The baseline answers every question with the commonest reference
answer of its type in the evaluated file itself: no blind answer prior can beat it, so accuracy above it is
accuracy that came from the image.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..conversation import Message, Template
from ..data.llava_json import record_messages
from ..eval.vqa_accuracy import exact_match, normalize_answer
from ..models.generation import generate_replies
from ..models.processing_vitsplit_llava import VitSplitLlavaProcessor
from .config import RunConfig, StageConfig
from .model_setup import Components
from .stage import load_stage_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRecord:
    record_id: str
    image: Path
    question: Message  # the user turn, "<image>\n" + question, as training saw it
    answer: str
    question_type: str  # the record's `question_type`, else the answer type of `answer` (see module docstring)


@dataclass(frozen=True)
class TypeScore:
    accuracy: float  # percent
    num_questions: int
    majority_answer: str  # the commonest reference answer of this type
    baseline: float  # percent: always answering `majority_answer`


@dataclass
class EvalResult:
    accuracy: float  # percent
    num_questions: int
    baseline: float  # percent: the majority answer of each question's type
    per_type: dict[str, TypeScore]
    predictions: dict[str, str]

    def report(self, source: Path | str) -> str:
        lines = [f"held-out accuracy {self.accuracy:.1f}% on {self.num_questions} questions ({source}); "
                 f"baseline (majority answer per question type) {self.baseline:.1f}%"]
        for qtype, t in self.per_type.items():
            lines.append(f"  {qtype:<9} {t.accuracy:5.1f}%  (baseline {t.baseline:5.1f}%: '{t.majority_answer}'; "
                         f"{t.num_questions} questions)")
        return "\n".join(lines)


def answer_type(answer: str) -> str:
    """VQAv2's answer types, read off a reference answer: 'yes/no', 'number' or 'other'."""
    normalized = normalize_answer(answer)
    if normalized in ("yes", "no"):
        return "yes/no"
    return "number" if normalized.isdigit() else "other"


def load_eval_records(val_json: Path, image_folder: Path, limit: int | None = None) -> list[EvalRecord]:
    """Single-turn image records (question, reference answer) from a LLaVA JSON list."""
    records = []
    for row in json.loads(Path(val_json).read_text()):
        messages, image = record_messages(row)
        if len(messages) != 2 or image is None:
            raise ValueError(f"{val_json}: eval record {row.get('id')} must have an image and one question/answer turn")
        answer = messages[1]["content"]
        qtype = row.get("question_type", answer_type(answer))
        if not isinstance(qtype, str) or not qtype:
            raise ValueError(f"{val_json}: eval record {row.get('id')}: question_type must be a non-empty string, got {qtype!r}")
        records.append(EvalRecord(str(row["id"]), image_folder / image, messages[0], answer, qtype))
    return records[:limit] if limit else records


def generate_answers(
    model, processor, records: list[EvalRecord], template: Template, batch_size: int, max_new_tokens: int
) -> dict[str, str]:
    """Greedy answers, `batch_size` records at a time through `generate_replies` (records about one image share
    its vision pass and prompt prefix within a batch)."""
    model.eval()
    answers = {}
    records = sorted(records, key=lambda r: str(r.image))  # an image's questions in the same batches
    for start in tqdm(range(0, len(records), batch_size), desc="evaluating", unit="batch"):
        batch = records[start:start + batch_size]
        images = []
        for record in batch:
            with Image.open(record.image) as image:
                image.load()
                images.append(image)
        texts = generate_replies(model, processor, images, [[r.question] for r in batch], template=template,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
        answers.update((record.record_id, text) for record, text in zip(batch, texts))
    return answers


def score(records: list[EvalRecord], predictions: dict[str, str]) -> EvalResult:
    """Exact-match accuracy (percent) overall and per question type, each beside its majority-answer baseline."""
    by_type: dict[str, list[EvalRecord]] = defaultdict(list)
    for record in records:
        by_type[record.question_type].append(record)
    per_type = {}
    hits = baseline_hits = 0.0
    for qtype, group in sorted(by_type.items()):
        answers = Counter(normalize_answer(r.answer) for r in group)
        majority = min(answers, key=lambda a: (-answers[a], a))  # ties broken by name: deterministic
        correct = sum(exact_match(predictions[r.record_id], r.answer) for r in group)
        hits += correct
        baseline_hits += answers[majority]
        per_type[qtype] = TypeScore(100 * correct / len(group), len(group), majority, 100 * answers[majority] / len(group))
    n = max(len(records), 1)
    return EvalResult(100 * hits / n, len(records), 100 * baseline_hits / n, per_type, predictions)


def evaluate_stage(config: RunConfig, components: Components, data_dir: Path, stage: StageConfig, stage_dir: Path) -> dict:
    """Score a finished stage's model on held-out questions against the majority-answer baseline, per question
    type (see module docstring); writes `<output_dir>/eval/{summary,predictions}.json` and returns the summary.
    Main process only."""
    ev = config.eval
    synthetic = not ev.val_json
    val_json = data_dir / "val.json" if synthetic else Path(ev.val_json)
    records = load_eval_records(val_json, data_dir / "images" if synthetic else Path(ev.image_folder), ev.limit)
    model = load_stage_output(config.model, components, stage, stage_dir)
    if torch.cuda.is_available():
        model.cuda()
    else:  # the other ranks wait at a barrier: use every core
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    processor = VitSplitLlavaProcessor.from_components(
        components.vision_tower, components.language_model, pad_to_square=stage.data.pad_to_square
    )
    predictions = generate_answers(model, processor, records, stage.data.template, ev.batch_size, ev.max_new_tokens)
    result = score(records, predictions)
    summary = {
        "accuracy": result.accuracy, "num_questions": result.num_questions, "chance_accuracy": result.baseline,
        "per_question_type": {t: asdict(v) for t, v in result.per_type.items()}, "val_json": str(val_json),
    }
    out = stage_dir.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "predictions.json").write_text(json.dumps(result.predictions, indent=1) + "\n")
    logger.info(result.report(val_json))
    return summary
