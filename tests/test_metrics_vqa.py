"""Official VQA normalisation and accuracy: hand-made tricky answers (expected values worked out by hand from
GT-Vision-Lab/VQA vqaEval.py at a013f00, see vitsplit_vlm/eval/vqa_accuracy.py) and the accuracy against an
independent leave-one-out computation."""

import itertools
import json
import random

import pytest

from vitsplit_vlm.eval import EvalInputError
from vitsplit_vlm.eval.vqa_accuracy import (
    exact_match,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)
from vitsplit_vlm.eval.vqav2 import load_vqav2_annotations, load_vqav2_predictions, load_vqav2_questions, score_vqav2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yes!", "yes "),  # mark touches no space -> replaced by a space (not stripped here)
        ("hello, world", "hello world"),  # ", " touches a space -> removed
        ("a,b", "a b"),
        ("1,000", "1000"),  # digit,digit -> every mark removed
        ("3,5 cats!", "35 cats"),  # ... including the unrelated "!"
        ("red-white", "red white"),
        ("red - white", "red  white"),  # removed, the double space is left to the word pass
        ("(left)", " left "),
        ("left (side)", "left side "),  # "(" touches a space, ")" does not: per-mark decision on the whole text
        ("x;(y", "x  y"),  # ";" -> " " makes " (" appear, but the test reads the original text: "(" -> " "
        ("on/off", "on off"),
        ('"quoted"', " quoted "),
        ("yes!!", "yes  "),
        ("e.g.", "eg"),  # periods go unless followed by a digit
        ("3.5", "3.5"),
        ("3.", "3"),
        (".5", ".5"),
        ("..5", ".5"),
        ("1.5.2", "1.5.2"),
        ("." * 40, "." * 8),  # official passes re.UNICODE (32) as the count
        ("it's", "it's"),  # apostrophe, colon, %, #, &, $ are not handled
        ("5:00", "5:00"),
        ("50%", "50%"),
        ("rock&roll", "rock&roll"),
        ("a_b\\c", "a b c"),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Two Dogs", "2 dogs"),
        ("an apple", "apple"),
        ("a", ""),
        ("None", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none..ten are mapped
        ("the one", "1"),
        ("anthe another", "anthe another"),  # whole words only
        ("dont know", "don't know"),
        ("Im", "im"),  # capitalised keys of the official table never match after lowercasing
        ("yall'll", "y'all'll"),
        ("twas", "'twas"),
        ("somebody'd", "somebodyd"),  # official table maps this one "backwards"
        ("oclock", "o'clock"),
        ("  spaced   out ", "spaced out"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


TRICKY = {
    "Two\tdogs\n": "2 dogs",
    "A man's hat.": "man's hat",
    "Yes.": "yes",
    "ten-four": "10 4",
    "It's 3.5 ft.": "it's 3.5 ft",
    "  The U.S.A.  ": "usa",
    "a/b": "b",  # "/" -> space, then the article "a" is dropped
    "cant": "can't",
    "Wouldnt've": "wouldn't've",
    "1,000-2,000": "10002000",
    "(none)": "0",
    "": "",
}


@pytest.mark.parametrize("raw, expected", TRICKY.items())
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_is_idempotent():
    """Submissions are written normalised; the server normalises again and must get the same string."""
    for raw in list(TRICKY) + ["yes!!", "..5", "left (side)", "hello, world", "3,5 cats!"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once, raw


def _loo_accuracy(pred: str, gts: list[str]) -> float:
    """Independent restatement: average over every 9-of-10 subset of min(matches / 3, 1)."""
    subsets = list(itertools.combinations(range(len(gts)), len(gts) - 1))
    return sum(min(1.0, sum(gts[i] == pred for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n_match, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_closed_form(n_match, expected):
    gts = ["cat"] * n_match + [f"other{i}" for i in range(10 - n_match)]
    assert vqa_accuracy("cat", gts) == pytest.approx(expected)


def test_vqa_accuracy_matches_independent_computation():
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "red", "blue"]
    for _ in range(300):
        gts = [rng.choice(vocab) for _ in range(10)]
        pred = rng.choice(vocab)
        assert vqa_accuracy(pred, gts) == pytest.approx(_loo_accuracy(pred, gts))


def test_vqa_accuracy_normalises_both_sides_when_humans_differ():
    """a013f00: differing human answers -> humans and prediction both get the punctuation and digit/article passes."""
    gts = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("Two.", gts) == pytest.approx(0.9)
    assert vqa_accuracy("yes", ["Yes"] * 5 + ["no"] * 5) == 1.0  # the 2016 revision never lowercased humans: 0.0
    assert vqa_accuracy("2", ["two"] * 5 + ["no"] * 5) == 1.0  # 2016: 0.0
    assert vqa_accuracy("yes", ["yes!"] * 9 + ["no"]) == 1.0  # "yes!" -> "yes " -> "yes"; 2016: 0.0
    assert vqa_accuracy("Red-White", ["red-white"] * 9 + ["red"]) == pytest.approx(1.0)
    assert vqa_accuracy("the red", ["A red"] * 2 + ["Blue"] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_identical_humans_are_compared_without_normalisation():
    """a013f00: ten identical (cleaned) human answers -> neither side is normalised beyond newline/tab/strip."""
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # 2016 normalised the prediction: 1.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0  # 2016: 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # cleaning applies to every answer
    assert vqa_accuracy("yes", ["yes\t"] * 9 + ["yes"]) == 1.0  # identical once cleaned
    assert vqa_accuracy("red white", ["red-white"] * 10) == 0.0
    assert vqa_accuracy("red-white", ["red-white"] * 10) == 1.0
    # what the VQAv2 CLI submits (fully normalised) scores as the server scores that file
    assert vqa_accuracy(normalize_answer("Yes."), ["yes"] * 10) == 1.0


def test_single_reference_needs_exact_match():
    with pytest.raises(ValueError, match="score a single reference answer with exact_match"):
        vqa_accuracy("yes", ["yes"])
    assert exact_match("The Two.", "two") == 1.0
    assert exact_match("yes!", "Yes") == 1.0  # both sides fully normalised
    assert exact_match("red", "blue") == 0.0


def _ann(qid, answers, qtype="what is", atype="other"):
    return {"question_id": qid, "image_id": 1, "question_type": qtype, "answer_type": atype,
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


ANNS = {
    1: _ann(1, ["yes"] * 10, "is the", "yes/no"),
    2: _ann(2, ["no"] * 8 + ["yes"] * 2, "is the", "yes/no"),
    3: _ann(3, ["2"] * 2 + ["3"] * 8, "how many", "number"),
    4: _ann(4, ["red"] * 10, "what color is the", "other"),
}


def test_score_vqav2_breakdown():
    preds = {1: "Yes", 2: "yes", 3: "two", 4: "blue"}
    # per question: 0.0 ("Yes" against ten identical "yes" is not normalised), 0.6, 0.6, 0.0
    s = score_vqav2(preds, ANNS)
    assert s["overall"] == 30.0
    assert s["perAnswerType"] == {"number": 60.0, "other": 0.0, "yes/no": 30.0}
    assert s["perQuestionType"] == {"how many": 60.0, "is the": 30.0, "what color is the": 0.0}
    assert s["num_questions"] == 4
    assert score_vqav2(preds, ANNS, question_ids=[1, 3])["overall"] == 30.0
    assert score_vqav2({**preds, 1: "yes"}, ANNS)["overall"] == 55.0


def test_score_vqav2_rounds_to_two_decimals_like_official():
    anns = {i: _ann(i, ["b"] + ["x"] * 9) for i in range(7)}
    preds = {i: "b" if i == 0 else "no" for i in range(7)}  # one question at 0.3, six at 0
    s = score_vqav2(preds, anns)
    assert s["overall"] == 4.29 and s["perAnswerType"] == {"other": 4.29}


def test_score_vqav2_rejects_missing_and_unknown_ids():
    with pytest.raises(EvalInputError, match=r"p\.json: 1 of 4 questions have no prediction \(e\.g\. \[4\]\)"):
        score_vqav2({1: "a", 2: "a", 3: "a"}, ANNS, source="p.json")
    with pytest.raises(EvalInputError, match=r"p\.json: 1 prediction\(s\) for question ids not in the ground truth"):
        score_vqav2({1: "a", 2: "a", 3: "a", 4: "a", 99: "a"}, ANNS, source="p.json")
    with pytest.raises(EvalInputError, match=r"1 questions have no annotation \(e\.g\. \[7\]\)"):
        score_vqav2({1: "a"}, ANNS, question_ids=[1, 7])
    with pytest.raises(EvalInputError, match=r"p\.json: no questions to score"):
        score_vqav2({}, {}, source="p.json")


def _write(path, obj):
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def test_loaders_accept_official_formats(tmp_path):
    qf = _write(tmp_path / "q.json", {"info": {}, "license": {}, "data_subtype": "val2014",
                                      "questions": [{"image_id": 9, "question": "Why?", "question_id": 90}]})
    questions, subtype = load_vqav2_questions(qf)
    assert subtype == "val2014" and questions[0].question_id == 90 and questions[0].image_id == 9
    af = _write(tmp_path / "a.json", {"annotations": list(ANNS.values())})
    assert set(load_vqav2_annotations(af)) == {1, 2, 3, 4}
    pf = _write(tmp_path / "p.json", [{"question_id": 1, "answer": "yes"}])
    assert load_vqav2_predictions(pf) == {1: "yes"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"VQAv2 predictions file .*p\.json is not valid JSON"),
        ({"question_id": 1}, r"must be a JSON list of"),
        ([{"question_id": 1, "answer": "a"}, {"question_id": "2", "answer": "b"}], r"record \[1\] must be"),
        ([{"question_id": True, "answer": "a"}], r"record \[0\] must be"),
        ([{"question_id": 1, "answer": 3}], r"record \[0\] must be"),
        ([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}],
         r"question_id 1 is answered twice \(record \[1\]\)"),
    ],
)
def test_malformed_predictions(tmp_path, content, message):
    with pytest.raises(EvalInputError, match=message):
        load_vqav2_predictions(_write(tmp_path / "p.json", content))


def test_malformed_questions_and_annotations(tmp_path):
    with pytest.raises(EvalInputError, match=r"VQAv2 question file not found: .*nope\.json"):
        load_vqav2_questions(tmp_path / "nope.json")
    with pytest.raises(EvalInputError, match=r"has no 'questions' list"):
        load_vqav2_questions(_write(tmp_path / "q.json", [1, 2]))
    with pytest.raises(EvalInputError, match=r"questions\[1\] needs int 'question_id'"):
        load_vqav2_questions(_write(tmp_path / "q.json", {"questions": [
            {"image_id": 1, "question": "q", "question_id": 1}, {"image_id": 1, "question": "q"}]}))
    with pytest.raises(EvalInputError, match=r"question_id 1 appears twice \(questions\[1\]\)"):
        load_vqav2_questions(_write(tmp_path / "q.json", {"questions": [
            {"image_id": 1, "question": "q", "question_id": 1}] * 2}))
    bad = dict(ANNS[1], answers=[{"answer": "yes"}])
    with pytest.raises(EvalInputError, match=r"a\.json: annotations\[1\] needs .* 'answers' list of the human"):
        load_vqav2_annotations(_write(tmp_path / "a.json", {"annotations": [ANNS[2], bad]}))
