"""MMBench (dev / test), official TSV in, circular evaluation out, as LLaVA-1.5 and the MMBench protocol score it.

File: the official TSV (``mmbench_dev_20230712.tsv``: ``index, question, hint, A-D, answer, category, l2-category,
image`` as base64, ...), in which every question appears once per rotation of its options, at ``index + k * 10**6``.
Each row is one question (LLaVA's scripts/v1_5/eval/mmbench.sh, ``model_vqa_mmbench.py --single-pred-prompt`` at
haotian-liu/LLaVA c121f04): ``[hint + "\\n"] + question + "\\nA. ..."`` (options up to the first empty / "nan" /
"none" one), then "Answer with the option's letter from the given choices directly."

  python eval/mmbench.py run --model-path CKPT --question-file mmbench_dev_20230712.tsv --output-dir runs/mmbench_dev
  python eval/mmbench.py run --model-path CKPT --question-file mmbench_test_en_20231003.tsv --output-dir runs/mmb_test
  python eval/mmbench.py score --predictions answers.jsonl --question-file mmbench_dev_20230712.tsv

Outputs: ``answers.jsonl`` (LLaVA's answers format) and ``submission.xlsx`` (the TSV without hint / category /
source / image / comment / l2-category, plus ``prediction``: what LLaVA's convert_mmbench_for_submission.py uploads
to the official server). Circular accuracy: a question counts iff the letter read from every one of its rows equals
that row's answer (a missing answer fails); the letter is read with VLMEvalKit's ``can_infer`` as lmms-eval 0.7.3
carries it (``MMBench_Evaluator.can_infer``: a lone option letter, bare or bracketed / punctuated, else the single
option whose text the answer contains). No GPT judge: an answer without an inferable letter is wrong. Reported
overall and per category / l2-category (percent).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import random
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .cli import LETTER_ANSWER, Benchmark, with_instruction
from .io import EvalInputError, check_prediction_ids
from .minisets import options_for, scene_questions
from .runner import EvalItem, QuestionId
from .scoring import check_scorable, load_llava_answers

OPTION_LETTERS = "ABCD"
ROUND = 10**6  # circular copies sit at index + k * ROUND
SUBMISSION_NAME = "submission.xlsx"
_DROPPED_FOR_SUBMISSION = ("hint", "category", "source", "image", "comment", "l2-category")
_NOT_IN_XLSX = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # control characters a worksheet cannot hold


@dataclass(frozen=True)
class MMBQuestion:
    index: int
    question: str
    hint: str | None
    options: dict[str, str]  # letter -> text, A.. up to the first missing one
    answer: str | None  # None in the test split
    category: str | None
    l2_category: str | None
    image: bytes

    @property
    def text(self) -> str:
        text = self.question if self.hint is None else f"{self.hint}\n{self.question}"
        return text + "".join(f"\n{k}. {v}" for k, v in self.options.items())


def _read_tsv(path: Path):
    import pandas as pd  # only MMBench needs it (a dependency of datasets)

    if not Path(path).is_file():
        raise EvalInputError(f"MMBench TSV not found: {path}. Check the path.")
    try:  # all text, missing cells / "nan" / "None" -> NaN as LLaVA's pd.read_table + is_none see them
        return pd.read_csv(path, sep="\t", dtype=str)
    except (ValueError, pd.errors.ParserError) as e:
        raise EvalInputError(f"MMBench TSV {path} cannot be parsed ({e}). Re-download it.") from e


def _cell(row, key: str) -> str | None:
    value = row.get(key)
    return None if not isinstance(value, str) or value.lower() in ("nan", "none") else value


def load_mmbench(path: str | Path, decode_images: bool = True) -> list[MMBQuestion]:
    """Rows of the official TSV; images are base64-decoded and checked (``decode_images``) before any model work."""
    df = _read_tsv(Path(path))
    missing = [c for c in ("index", "question", "A", "B", "image") if c not in df.columns]
    if missing:
        raise EvalInputError(f"MMBench TSV {path} lacks the columns {missing}; expected the official "
                             "mmbench_dev / mmbench_test TSV.")
    out, seen = [], set()
    for line, row in enumerate(df.to_dict("records"), start=2):
        index = _cell(row, "index")
        if index is None or not index.strip().isdigit() or _cell(row, "question") is None:
            raise EvalInputError(f"MMBench TSV {path}: line {line} needs an integer 'index' and a 'question'.")
        options = {}
        for letter in OPTION_LETTERS:
            value = _cell(row, letter)
            if value is None:
                break
            options[letter] = value
        answer = _cell(row, "answer")
        if len(options) < 2 or (answer is not None and answer not in options):
            raise EvalInputError(f"MMBench TSV {path}: line {line} (index {index}) needs options A and B and an "
                                 f"'answer' among {list(options)}, got answer {answer!r}.")
        image = b""
        if decode_images:
            try:
                image = base64.b64decode(row.get("image") or "", validate=True)
                with Image.open(io.BytesIO(image)) as im:
                    im.verify()
            except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as e:
                raise EvalInputError(f"MMBench TSV {path}: line {line} (index {index}) has no readable base64 "
                                     f"image ({e}). Re-download the TSV.") from e
        q = MMBQuestion(int(index), row["question"], _cell(row, "hint"), options, answer, _cell(row, "category"),
                        _cell(row, "l2-category"), image)
        if q.index in seen:
            raise EvalInputError(f"MMBench TSV {path}: index {q.index} appears twice (line {line}).")
        seen.add(q.index)
        out.append(q)
    return out


# ------------------------------------------------------------------------------- VLMEvalKit's letter matcher


def _count_tokens(words: list[str], choices: str, prefix: str = "", suffix: str = "") -> int:
    return sum(prefix + c + suffix in words for c in choices)


def can_infer_option(answer: str, num_choice: int = 5) -> str | None:
    """A lone option letter among the whitespace-split words, bare or as "B." "(B)" ":B" ... (one match only)."""
    choices = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return None
    words = [w.strip() for w in answer.split()]
    if _count_tokens(words, choices) == 1:
        for ch in choices:
            if "A" in words and len(words) > 3:  # "A" may be the article: try the punctuated forms instead
                break
            if ch in words:
                return ch
    forms = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
             (":", "."), (":", ")"), (":", ")."))
    for prefix, suffix in forms:
        if _count_tokens(words, choices, prefix, suffix) == 1:
            for ch in choices:
                if prefix + ch + suffix in words:
                    return ch
    return None


def can_infer_text(answer: str, options: dict[str, str]) -> str | None:
    """The single option whose (lowercased) text occurs in the answer."""
    answer = answer.lower()
    found = [k for k, v in options.items() if v.lower() in answer]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, options: dict[str, str]) -> str | None:
    return can_infer_option(answer) or can_infer_text(answer, options)


def score_mmbench(answers: dict[int, str], questions: list[MMBQuestion], source: str = "answers") -> dict:
    """Circular accuracy over every question group (index % 10**6) with ground truth."""
    check_scorable(source, "MMBench", len(questions), [q.index for q in questions if q.answer is None],
                   "the test split is scored by the official server (upload submission.xlsx).")
    check_prediction_ids(answers, [], [q.index for q in questions], source, "")
    groups: dict[int, list[MMBQuestion]] = defaultdict(list)
    for q in questions:
        groups[q.index % ROUND].append(q)
    hits = {g: float(all(q.index in answers and can_infer(answers[q.index], q.options) == q.answer for q in rows))
            for g, rows in groups.items()}

    def pct(keys) -> float:
        keys = list(keys)
        return round(100 * sum(hits[k] for k in keys) / len(keys), 2)

    def by(attr: str) -> dict[str, float]:
        names: dict[str, list[int]] = defaultdict(list)
        for g, rows in groups.items():
            names[str(getattr(rows[0], attr))].append(g)
        return {name: pct(keys) for name, keys in sorted(names.items())}

    return {"circular_accuracy": pct(groups), "category": by("category"), "l2_category": by("l2_category"),
            "num_questions": len(groups), "num_rows": len(questions), "num_answered_rows": len(answers)}


# ------------------------------------------------------------------------------------------------ the CLI


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="the official MMBench dev TSV")


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    questions = load_mmbench(args.question_file, decode_images=args.command == "run")
    if args.command != "run":
        return [EvalItem(q.index, b"", q.text) for q in questions]
    return [EvalItem(q.index, q.image, with_instruction(q.text, args.instruction)) for q in questions]


def write_submission(path: Path, tsv: Path, answers: dict[int, str]) -> Path:
    """LLaVA's convert_mmbench_for_submission.py table: the TSV's remaining columns plus 'prediction' (control
    characters a model may emit are dropped from it: a worksheet cannot hold them, LLaVA's converter crashes)."""
    df = _read_tsv(tsv)
    df = df[df["index"].astype(int).isin(answers)]
    df = df.drop(columns=[c for c in _DROPPED_FOR_SUBMISSION if c in df.columns])
    df.insert(min(6, len(df.columns)), "prediction", [_NOT_IN_XLSX.sub("", answers[int(i)]) for i in df["index"]])
    tmp = path.with_name(f".{path.name}.tmp.xlsx")
    try:
        df.to_excel(tmp, index=False, engine="openpyxl")
    except ImportError as e:
        raise EvalInputError(f"writing {path} needs openpyxl ({e}); pip install openpyxl, then run `merge`.") from e
    tmp.replace(path)
    return path


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    questions = [q for q in load_mmbench(args.question_file, decode_images=False) if q.index in answers]  # --limit
    records = [{"question_id": q.index, "round_id": 0, "prompt": q.text, "text": answers[q.index],
                "options": list(q.options.values()), "option_char": list(q.options)} for q in questions]
    write_submission(args.output_dir / SUBMISSION_NAME, args.question_file, answers)
    if any(q.answer is None for q in questions):
        return records, None
    return records, score_mmbench(answers, questions, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    answers = {qid: r["text"] for qid, r in load_llava_answers(args.predictions, int).items()}
    return score_mmbench(answers, load_mmbench(args.question_file, decode_images=False),
                         source=str(args.predictions)), {"question_file": str(args.question_file)}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Eight shapes questions with 2-4 options, each in every rotation of its options (index + k * 10**6), some
    with a hint, as the official dev TSV lays them out."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for i, item in enumerate(scene_questions(8, seed, qtypes=("color", "shape", "count", "position"))):
        buf = io.BytesIO()
        item.image.save(buf, format="JPEG", quality=95)
        image = base64.b64encode(buf.getvalue()).decode()
        options, answer = options_for(item.qa, rng, rng.choice([2, 3, 4]))
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            rows.append({"index": i + k * ROUND, "question": item.qa.question,
                         "hint": "Look at the shapes." if i % 3 == 0 else None,
                         **{OPTION_LETTERS[j]: rotated[j] if j < len(rotated) else None for j in range(4)},
                         "answer": OPTION_LETTERS[rotated.index(options[answer])],
                         "category": item.qa.qtype, "l2-category": "perception", "image": image,
                         "source": "shapes", "split": "dev", "comment": None})
    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "mmbench_dev_mini.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    return ["--question-file", str(tsv)]


BENCHMARK = Benchmark(name="mmbench", final_file="answers.jsonl", default_image_name_format=None,
                      default_instruction=LETTER_ANSWER, add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
