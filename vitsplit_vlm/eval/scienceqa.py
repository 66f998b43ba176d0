"""ScienceQA-IMG: the test problems that have an image, prompted and scored as LLaVA-1.5 does.

Files: ScienceQA's own ``problems.json`` and ``pid_splits.json`` and its images (``<image-dir>/<pid>/image.png``,
i.e. ``images/test``). The prompt is what LLaVA's ``llava_test_CQM-A.json`` + ``model_vqa_science.py
--single-pred-prompt`` build (haotian-liu/LLaVA c121f04): ``"Context: {hint}\\n"`` (only when there is a hint),
the question, the options as ``"A. ...\\nB. ..."``, then "Answer with the option's letter from the given choices
directly."

  python eval/scienceqa.py run --model-path CKPT --question-file problems.json --pid-splits pid_splits.json \\
      --image-dir images/test --output-dir runs/sqa
  python eval/scienceqa.py score --predictions answers.jsonl --question-file problems.json --pid-splits pid_splits.json

Scoring follows ``llava/eval/eval_science_qa.py``: the letter is the whole answer if it is one of A-E, else its first
character when followed by ". ", else the single match of "The answer is X."; it is right iff it names the correct
choice. Accuracy (percent) over the image problems of the split (LLaVA's "IMG-Accuracy"), and per subject
(NAT / SOC / LAN), context modality (TXT: has a text hint, IMG: has an image, NO: neither) and grade (G1-6 / G7-12),
as the ScienceQA paper reports them. ``answers.jsonl`` is LLaVA's answers format.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..conversation import IMAGE_TOKEN
from .cli import LETTER_ANSWER, Benchmark, with_instruction
from .io import EvalInputError, atomic_write_json, check_prediction_ids, load_json
from .minisets import options_for, save_jpeg, scene_questions
from .runner import EvalItem, QuestionId, image_path
from .scoring import check_scorable, grouped_percent, load_llava_answers, percent

LETTERS = "ABCDE"
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


@dataclass(frozen=True)
class SQAProblem:
    pid: str
    image: str
    hint: str
    question: str
    choices: list[str]
    answer: int
    subject: str
    grade: str

    @property
    def text(self) -> str:
        """LLaVA's CQM-A human turn without the image token."""
        context = f"Context: {self.hint}\n" if self.hint else ""
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return f"{context}{self.question}\n{options}".strip()


def load_sqa_problems(problems_file: str | Path, pid_splits: str | Path, split: str) -> list[SQAProblem]:
    """The image problems of ``split`` in pid_splits order."""
    problems = load_json(problems_file, "ScienceQA problems file")
    splits = load_json(pid_splits, "ScienceQA pid_splits file")
    if not isinstance(problems, dict):
        raise EvalInputError(f"ScienceQA problems file {problems_file} must be ScienceQA's problems.json "
                             "({pid: problem}).")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        raise EvalInputError(f"ScienceQA pid_splits file {pid_splits} has no {split!r} list; pass ScienceQA's "
                             "pid_splits.json or another --split.")
    out = []
    for pid in splits[split]:
        p = problems.get(pid)
        if p is None:
            raise EvalInputError(f"ScienceQA pid_splits file {pid_splits}: pid {pid!r} is not in {problems_file}.")
        ok = (isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("choices"), list)
              and 2 <= len(p["choices"]) <= len(LETTERS) and all(isinstance(c, str) for c in p["choices"])
              and type(p.get("answer")) is int and 0 <= p["answer"] < len(p["choices"])
              and isinstance(p.get("hint", ""), str) and isinstance(p.get("subject"), str)
              and isinstance(p.get("grade"), str))
        if not ok:
            raise EvalInputError(f"ScienceQA problems file {problems_file}: problem {pid!r} needs str 'question', "
                                 "2-5 str 'choices', an int 'answer' index into them, str 'hint', 'subject' and "
                                 f"'grade', got {p!r:.200}.")
        if p.get("image"):
            out.append(SQAProblem(pid, p["image"], p.get("hint", ""), p["question"], p["choices"], p["answer"],
                                  p["subject"], p["grade"]))
    return out


def parse_letter(text: str) -> str | None:
    """LLaVA's eval_science_qa.py answer extraction (see the module docstring); None when it fails."""
    if text in tuple(LETTERS):  # one whole letter (LLaVA tests membership in a list: "" is not in it)
        return text
    if len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def _grade_group(grade: str) -> str:
    number = int(grade.removeprefix("grade")) if grade.removeprefix("grade").isdigit() else 0
    return "G1-6" if number <= 6 else "G7-12"


def score_sqa(answers: dict[str, str], problems: list[SQAProblem], source: str = "answers") -> dict:
    check_scorable(source, "ScienceQA image", len(problems))
    check_prediction_ids(answers, [p.pid for p in problems], [p.pid for p in problems], source,
                         "Finish inference (re-run resumes) before scoring.")
    rows = []
    for p in problems:
        letter = parse_letter(answers[p.pid])
        rows.append((p, float(letter is not None and LETTERS.index(letter) == p.answer)))
    context = [("IMG", s) for _, s in rows] + [("TXT", s) for p, s in rows if p.hint]
    return {"accuracy": percent([s for _, s in rows]),
            "subject": grouped_percent((SUBJECTS.get(p.subject, p.subject), s) for p, s in rows),
            "context_modality": grouped_percent(context),
            "grade": grouped_percent((_grade_group(p.grade), s) for p, s in rows),
            "num_questions": len(rows)}


# ------------------------------------------------------------------------------------------------ the CLI


def add_args(command: str, p: argparse.ArgumentParser) -> None:
    if command == "score":
        p.add_argument("--question-file", type=Path, required=True, help="ScienceQA's problems.json")
    p.add_argument("--pid-splits", type=Path, required=True, help="ScienceQA's pid_splits.json")
    p.add_argument("--split", default="test", help="split of pid_splits.json (default: %(default)s)")


def _problems(args: argparse.Namespace) -> list[SQAProblem]:
    return load_sqa_problems(args.question_file, args.pid_splits, args.split)


def load_items(args: argparse.Namespace) -> list[EvalItem]:
    problems = _problems(args)
    if args.command != "run":
        return [EvalItem(p.pid, Path(), p.text) for p in problems]
    return [EvalItem(p.pid, image_path(args.image_dir, args.image_name_format, pid=p.pid, image=p.image),
                     with_instruction(p.text, args.instruction)) for p in problems]


def finalize(args: argparse.Namespace, answers: dict[QuestionId, str]) -> tuple[list[dict], dict | None]:
    """LLaVA's answers file (prompt with the image token, as eval_science_qa.py counts IMG problems) and the scores."""
    problems = [p for p in _problems(args) if p.pid in answers]  # --limit
    records = [{"question_id": p.pid, "prompt": f"{IMAGE_TOKEN}\n{p.text}", "text": answers[p.pid]}
               for p in problems]
    return records, score_sqa(answers, problems, source=str(args.output_dir))


def score_file(args: argparse.Namespace) -> tuple[dict, dict]:
    answers = {pid: r["text"] for pid, r in load_llava_answers(args.predictions, str).items()}
    return score_sqa(answers, _problems(args), source=str(args.predictions)), {
        "problems_file": str(args.question_file), "pid_splits": str(args.pid_splits), "split": args.split}


def write_miniset(out: Path, seed: int) -> list[str]:
    """Twelve image problems (2-4 lettered options, some with a text hint) and two text-only ones, which the
    IMG evaluation must leave out, in ScienceQA's problems.json / pid_splits.json layout."""
    rng = random.Random(seed)
    problems, test = {}, []
    subjects = list(SUBJECTS)
    for i, item in enumerate(scene_questions(12, seed, qtypes=("color", "shape", "count", "position"))):
        pid = str(1000 + i)
        choices, answer = options_for(item.qa, rng, rng.choice([2, 3, 4]))
        save_jpeg(item.image, out / "images" / "test" / pid / "image.png")
        problems[pid] = {"question": item.qa.question, "choices": choices, "answer": answer,
                         "hint": "The picture shows simple shapes." if i % 3 == 0 else "", "image": "image.png",
                         "task": "closed choice", "grade": f"grade{2 + i % 10}", "subject": subjects[i % 3],
                         "topic": "shapes", "category": "Shapes", "skill": "Identify shapes", "lecture": "",
                         "solution": item.qa.full_answer, "split": "test"}
        test.append(pid)
    for j, (question, choices, answer) in enumerate([("Which is a color?", ["red", "square"], 0),
                                                     ("Which is a shape?", ["blue", "circle"], 1)]):
        pid = str(2000 + j)
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "", "image": None,
                         "task": "closed choice", "grade": "grade1", "subject": "language science",
                         "topic": "words", "category": "Words", "skill": "", "lecture": "", "solution": "",
                         "split": "test"}
        test.append(pid)
    qf = atomic_write_json(out / "problems.json", problems)
    splits = atomic_write_json(out / "pid_splits.json", {"train": [], "val": [], "test": test})
    return ["--question-file", str(qf), "--pid-splits", str(splits), "--image-dir", str(out / "images" / "test")]


BENCHMARK = Benchmark(name="scienceqa", final_file="answers.jsonl", default_image_name_format="{pid}/{image}",
                      default_instruction=LETTER_ANSWER, add_args=add_args, load_items=load_items, finalize=finalize,
                      score_file=score_file, write_miniset=write_miniset)
