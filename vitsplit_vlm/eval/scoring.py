"""Helpers the benchmarks' scorers share: percentages, grouped accuracies, LLaVA's answers files."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from .io import EvalInputError, load_jsonl


def percent(values: Sequence[float]) -> float:
    """Mean of per-question scores in [0, 1] as a percentage with 2 decimals (never of an empty list)."""
    if not values:
        raise ValueError("percent of no scores")
    return round(100 * sum(values) / len(values), 2)


def grouped_percent(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{group: percent} over (group, score) pairs, groups sorted."""
    groups: dict[str, list[float]] = defaultdict(list)
    for group, score in pairs:
        groups[group].append(score)
    return {g: percent(v) for g, v in sorted(groups.items())}


def check_scorable(source: str, benchmark: str, num_questions: int, without_truth: Sequence = (),
                   server: str = "") -> None:
    """Scoring nothing, or questions without ground truth (a test split), is an error, never a score."""
    if not num_questions:
        raise EvalInputError(f"{source}: no {benchmark} questions to score; pass a non-empty question file.")
    if without_truth:
        raise EvalInputError(f"{source}: {len(without_truth)} questions have no ground truth (e.g. "
                             f"{list(without_truth)[:3]}); {server}")


def load_llava_answers(path: str | Path, id_type: type) -> dict:
    """LLaVA's answers file (JSON lines ``{"question_id", "prompt", "text", ...}``) -> {question_id: record}."""
    answers: dict = {}
    for i, rec in enumerate(load_jsonl(path, "answers file"), start=1):
        if type(rec.get("question_id")) is not id_type or not isinstance(rec.get("text"), str):
            raise EvalInputError(f"answers file {path}: line {i} needs {id_type.__name__} 'question_id' and str "
                                 f"'text', got {rec!r:.200}.")
        if rec["question_id"] in answers:
            raise EvalInputError(f"answers file {path}: question_id {rec['question_id']!r} is answered twice "
                                 f"(line {i}). Keep one answer per question.")
        answers[rec["question_id"]] = rec
    return answers
