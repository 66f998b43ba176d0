"""Held-out evaluation after training: greedy answers to single-question LLaVA records, scored by exact match.

Prompts are rendered by the processor with the template the model was trained with, from the human turn as the
training data layer reads it (`record_messages`), so the score measures what training taught, not a prompt
mismatch. Answers are compared after the official VQA normalisation (`vitsplit_vlm.eval.vqa_accuracy`), per question type
when the synthetic set's VQAv2 annotations are available.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..conversation import Message, Template
from ..data.llava_json import record_messages
from ..eval.vqa_accuracy import exact_match
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


@dataclass
class EvalResult:
    accuracy: float  # percent
    num_questions: int
    per_type: dict[str, float]
    predictions: dict[str, str]


def load_eval_records(val_json: Path, image_folder: Path, limit: int | None = None) -> list[EvalRecord]:
    """Single-turn image records (question, reference answer) from a LLaVA JSON list."""
    records = []
    for row in json.loads(Path(val_json).read_text()):
        messages, image = record_messages(row)
        if len(messages) != 2 or image is None:
            raise ValueError(f"{val_json}: eval record {row.get('id')} must have an image and one question/answer turn")
        records.append(EvalRecord(str(row["id"]), image_folder / image, messages[0], messages[1]["content"]))
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


def score(records: list[EvalRecord], predictions: dict[str, str], question_types: dict[str, str] | None = None) -> EvalResult:
    """VQA accuracy (percent) overall and per question type (when `question_types` maps record ids to types)."""
    by_type: dict[str, list[float]] = defaultdict(list)
    overall = []
    for record in records:
        acc = exact_match(predictions[record.record_id], record.answer)
        overall.append(acc)
        if question_types:
            by_type[question_types[record.record_id]].append(acc)
    per_type = {t: 100 * sum(v) / len(v) for t, v in sorted(by_type.items())}
    return EvalResult(100 * sum(overall) / max(len(overall), 1), len(overall), per_type, predictions)


def synthetic_question_types(data_dir: Path) -> dict[str, str]:
    """Record id -> question type, from the synthetic set's VQAv2-style annotations."""
    annotations = json.loads((data_dir / "vqav2" / "annotations.json").read_text())["annotations"]
    return {str(a["question_id"]): a["question_type"] for a in annotations}


def evaluate_stage(config: RunConfig, components: Components, data_dir: Path, stage: StageConfig, stage_dir: Path) -> dict:
    """Score a finished stage's model on held-out questions (with the synthetic set: against its chance accuracy);
    writes `<output_dir>/eval/{summary,predictions}.json` and returns the summary. Main process only."""
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
    result = score(records, predictions, synthetic_question_types(data_dir) if synthetic else None)
    summary = {"accuracy": result.accuracy, "num_questions": result.num_questions, "per_question_type": result.per_type}
    line = f"held-out accuracy {result.accuracy:.1f}% on {result.num_questions} questions ({val_json})"
    if synthetic:
        chance = json.loads((data_dir / "stats.json").read_text())
        summary["chance_accuracy"] = 100 * chance["chance_accuracy"]
        summary["chance_per_question_type"] = {t: 100 * v["chance_accuracy"] for t, v in chance["question_types"].items()}
        line += f"; chance (majority answer per question type) {summary['chance_accuracy']:.1f}%"
        for qtype, acc in result.per_type.items():
            line += f"\n  {qtype:<9} {acc:5.1f}%  (chance {summary['chance_per_question_type'][qtype]:.1f}%)"
    out = stage_dir.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "predictions.json").write_text(json.dumps(result.predictions, indent=1) + "\n")
    logger.info(line)
    return summary
