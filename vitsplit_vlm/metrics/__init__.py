"""Official-style VQAv2 / GQA metrics and the resumable, sharded evaluation loop used by eval/*.py."""

from .gqa import normalize_gqa_answer, score_gqa
from .io import EvalInputError
from .vqa import exact_match, normalize_answer, process_digit_article, process_punctuation, score_vqav2, vqa_accuracy

__all__ = [
    "EvalInputError",
    "exact_match",
    "normalize_answer",
    "normalize_gqa_answer",
    "process_digit_article",
    "process_punctuation",
    "score_gqa",
    "score_vqav2",
    "vqa_accuracy",
]
