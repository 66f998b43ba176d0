"""lmms-eval 0.7.3's own scoring functions (``lmms_eval/tasks/<task>/utils.py``) as the oracle: fed the same
predictions on the same mini-sets, they give the scores ours give. Where the two differ by definition, the test
pins the difference down (and the module docstrings say which side follows the official scorer).

lmms-eval is an optional extra; these tests skip without it, except where ``VITSPLIT_REQUIRE_LMMS_EVAL=1`` (CI) makes
a missing lmms-eval a failure."""

import importlib
import os
import random

import pytest

from vitsplit_vlm.eval import get_benchmark
from vitsplit_vlm.eval.cli import LETTER_ANSWER
from vitsplit_vlm.eval.mmbench import load_mmbench, score_mmbench
from vitsplit_vlm.eval.pope import load_pope_labels, load_pope_questions, score_pope
from vitsplit_vlm.eval.scienceqa import LETTERS, load_sqa_problems, score_sqa
from vitsplit_vlm.eval.vqa_accuracy import normalize_answer, vqa_accuracy
from vitsplit_vlm.eval.vizwiz import INSTRUCTION, load_vizwiz, score_vizwiz


def lmms(module: str):
    try:
        return importlib.import_module(f"lmms_eval.tasks.{module}")
    except ImportError as e:
        if os.environ.get("VITSPLIT_REQUIRE_LMMS_EVAL") == "1":
            raise
        pytest.skip(f"lmms-eval not importable ({e})")


def _miniset(name, tmp_path, seed=0):
    return get_benchmark(name).write_miniset(tmp_path / name, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pope_equals_lmms_eval(tmp_path, seed):
    utils = lmms("pope.utils")
    args = _miniset("pope", tmp_path, seed)
    questions = load_pope_questions(args[1])
    labels = load_pope_labels(questions, args[5])
    rng = random.Random(seed)
    # what models say; lmms-eval compares the lowercased, stripped text to "yes"/"no" exactly, LLaVA parses words
    answers = {q.question_id: rng.choice(["Yes", "No", "yes", "no", " No "]) for q in questions}
    ours = score_pope(answers, questions, labels)
    for category, metrics in ours.items():
        docs = [{"question_id": q.question_id, "question": q.text, "answer": labels[q.question_id]}
                for q in questions if q.category == category]
        results = [utils.pope_process_results(d, [answers[d["question_id"]]]) for d in docs]
        theirs = {name: agg([r[key] for r in results]) for name, key, agg in (
            ("accuracy", "pope_accuracy", utils.pope_aggregate_accuracy),
            ("precision", "pope_precision", utils.pope_aggregate_precision),
            ("recall", "pope_recall", utils.pope_aggregate_recall),
            ("f1", "pope_f1_score", utils.pope_aggregate_f1_score))}
        # lmms-eval reports 0 where the denominator is 0; we report None (LLaVA's eval_pope.py crashes there)
        assert {k: 0 if v is None else v for k, v in metrics.items() if k in theirs} == pytest.approx(theirs)
        # lmms-eval's "yes ratio" counts the labels, LLaVA's (ours) the answers
        label_yes = sum(d["answer"] == "yes" for d in docs) / len(docs)
        assert utils.pope_aggregate_yes_ratio([r["pope_yes_ratio"] for r in results]) == label_yes
        assert metrics["yes_ratio"] == (metrics["TP"] + metrics["FP"]) / len(docs)


def test_pope_parsing_differs_from_lmms_eval_on_sentences():
    """LLaVA's first-sentence word rule (ours) reads "No, there is none." as no; lmms-eval's exact match reads it as
    neither yes nor no, so it is wrong for either label."""
    utils = lmms("pope.utils")
    doc = {"question_id": 1, "question": "Is there a cat?", "answer": "no"}
    assert utils.pope_process_results(doc, ["No, there is none."])["pope_accuracy"]["score"] == 0.0
    from vitsplit_vlm.eval.pope import parse_yes_no

    assert parse_yes_no("No, there is none.") == "no"


@pytest.mark.parametrize("seed", [0, 1])
def test_scienceqa_img_prompt_and_accuracy_equal_lmms_eval(tmp_path, seed):
    utils = lmms("scienceqa.utils")
    args = _miniset("scienceqa", tmp_path, seed)
    problems = load_sqa_problems(args[1], args[3], "test")
    kwargs = {"format": "default", "pre_prompt": "", "post_prompt": f"\n{LETTER_ANSWER}"}  # scienceqa_img.yaml
    rng = random.Random(seed)
    answers = {}
    for p in problems:
        doc = {"hint": p.hint, "question": p.question, "choices": p.choices, "answer": p.answer}
        assert utils.sqa_doc_to_text(doc, kwargs) == f"{p.text}\n{LETTER_ANSWER}"
        letter = rng.choice([LETTERS[p.answer], LETTERS[(p.answer + 1) % len(p.choices)]])
        answers[p.pid] = rng.choice([letter, f"{letter}. {p.choices[LETTERS.index(letter)]}"])
    ours = score_sqa(answers, problems)["accuracy"]
    theirs = [utils.sqa_process_results({"choices": p.choices, "answer": p.answer}, [answers[p.pid]])["exact_match"]
              for p in problems]
    assert ours == round(100 * sum(theirs) / len(theirs), 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vizwiz_equals_lmms_eval_on_submitted_answers(tmp_path, seed):
    utils = lmms("vizwiz_vqa.utils")
    args = _miniset("vizwiz", tmp_path, seed)
    questions = load_vizwiz(args[1])
    rng = random.Random(seed)
    vocab = sorted({a for q in questions for a in q.answers})
    raw = {q.image: rng.choice([rng.choice(q.answers).capitalize() + ".", rng.choice(vocab), "Unanswerable"])
           for q in questions}
    submitted = {k: normalize_answer(v) for k, v in raw.items()}  # what our submission.json holds
    ours = score_vizwiz(submitted, questions)["overall"]
    theirs = [utils.vizwiz_vqa_process_results({"question_id": q.image, "answers": list(q.answers)},
                                               [submitted[q.image]])["exact_match"] for q in questions]
    assert ours == round(100 * sum(theirs) / len(theirs), 2)
    kwargs = {"pre_prompt": "", "post_prompt": f"\n{INSTRUCTION}"}  # lmms-eval's VizWiz prompt is LLaVA's
    assert all(utils.vizwiz_vqa_doc_to_text({"question": q.question}, kwargs) == f"{q.question}\n{INSTRUCTION}"
               for q in questions if q.question[0].isupper())


def test_vqav2_equals_lmms_eval_except_on_unnormalised_answers_to_identical_humans():
    """lmms-eval's VQAv2 normalises both sides always; the official a013f00 code (ours) leaves both alone when the
    ten humans agree. They agree on every normalised prediction, which is what our submission holds."""
    utils = lmms("vqav2.utils")
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "red", "red white", "dog"]
    for _ in range(300):
        humans = [rng.choice(vocab) for _ in range(10)] if rng.random() < 0.7 else [rng.choice(vocab)] * 10
        pred = normalize_answer(rng.choice(["Yes.", "no", "Two", "red-white", "a dog", "Red", "3"]))
        doc = {"question_id": 1, "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(humans)]}
        assert vqa_accuracy(pred, humans) == pytest.approx(utils.vqav2_process_results(doc, [pred])["exact_match"])
    doc = {"question_id": 1, "answers": [{"answer": "yes", "answer_id": i} for i in range(10)]}
    assert utils.vqav2_process_results(doc, ["Yes"])["exact_match"] == 1
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmbench_circular_equals_lmms_eval_static(tmp_path, seed, capsys):
    evals = lmms("mmbench.mmbench_evals")
    args = _miniset("mmbench", tmp_path, seed)
    questions = load_mmbench(args[1], decode_images=False)
    rng = random.Random(seed)
    answers = {}
    for q in questions:
        letter = q.answer if rng.random() < 0.8 else rng.choice(list(q.options))
        answers[q.index] = rng.choice([letter, f"{letter}. {q.options[letter]}", f"({letter})", q.options[letter]])
    ours = score_mmbench(answers, questions)
    results = [{"index": q.index, "question": q.question, "answer": q.answer, "prediction": answers[q.index],
                "hint": q.hint, "source": "mini", "split": "dev", "category": q.category,
                "L2-category": q.l2_category, **{k: q.options.get(k, float("nan")) for k in "ABCD"}}
               for q in questions]
    overall, category, _ = evals.MMBench_Evaluator(sys_prompt="There are several options:").eval_result(
        results, eval_method="static")
    capsys.readouterr()
    assert ours["circular_accuracy"] == round(100 * overall, 2)
    assert ours["category"] == {k: round(100 * v, 2) for k, v in sorted(category.items())}
