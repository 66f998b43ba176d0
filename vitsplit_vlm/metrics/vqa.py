"""VQAv2: official answer normalisation, the official accuracy, and the official file formats.

Why reimplemented: the official evaluation (GT-Vision-Lab/VQA, vqaEval.py) is Python-2-era code built around its
own loader classes. This module reproduces its behaviour rule for rule, quirks included, so local val scores
match what the official script and the EvalAI server report:

* predictions: newlines/tabs -> spaces, strip, punctuation pass, then lowercase + number words -> digits +
  drop articles + restore contractions;
* ground truth: only the punctuation pass, and only when the 10 human answers are not all identical;
* the punctuation pass removes a mark outright when it touches a space somewhere in the answer (or when the
  answer contains digit,digit), else replaces it with a space; periods are dropped unless followed by a digit
  (the official lookbehind is misspelt as the lookahead ``(?!<=\\d)``, which never fires, and ``re.UNICODE`` is
  passed where ``count`` goes, so at most 32 periods are removed);
* accuracy of an answer = mean over the 10 leave-one-out subsets of min(#matching humans / 3, 1).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .io import EvalInputError, check_prediction_ids, load_json, load_prediction_list

# Official contractions table: keys are answers with the apostrophes left out. The capitalised keys can never
# match (words are lowercased first) and "somebody'd" maps the "wrong" way; both kept as in the official table.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Marks handled by the punctuation pass (no apostrophe, colon, period, %, #, $, & ...), in the official order.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # official pattern, see module docstring
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS_REMOVED = int(re.UNICODE)  # official code passes re.UNICODE (32) as re.sub's count


def process_punctuation(text: str) -> str:
    """Official punctuation pass; the 'touches a space' test looks at the original text, not the running result."""
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Official word pass: lowercase, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """Full official normalisation of a predicted answer."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Official VQA accuracy in [0, 1] of one raw prediction against the human answers (10 in VQAv2).

    Leave-one-out by position (the official code compares answer dicts, which differ by their answer_id).
    With one reference the leave-one-out subsets are empty and the score is always 0, so that is refused."""
    if len(gt_answers) < 2:
        raise ValueError(f"vqa_accuracy needs the human answers (10 in VQAv2), got {len(gt_answers)}; "
                         "score a single reference answer with exact_match")
    pred = normalize_answer(prediction)
    gts = [process_punctuation(a) for a in gt_answers] if len(set(gt_answers)) > 1 else list(gt_answers)
    matches = [g == pred for g in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both answers are equal after the full official normalisation: for sets with one reference."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


# ----------------------------------------------------------------------------------------------- file formats


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
        "overall": pct(overall) if overall else 0.0,
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
