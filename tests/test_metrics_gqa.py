"""GQA exact-match accuracy and its breakdowns, on a hand-made set in the official question format."""

import json

import pytest

from vitsplit_vlm.eval import EvalInputError
from vitsplit_vlm.eval.gqa import load_gqa_predictions, load_gqa_questions, normalize_gqa_answer, score_gqa


@pytest.mark.parametrize(
    "raw, expected",
    [("Yes.", "yes"), (" The  Cat \n", "the cat"), ("left...", "left"), ("U.S.", "u.s"), ("3.5", "3.5"), ("", "")],
)
def test_normalize_gqa_answer(raw, expected):
    assert normalize_gqa_answer(raw) == expected


def _q(image, answer, structural, semantic, balanced=True):
    return {"imageId": image, "question": "Is it?", "answer": answer, "fullAnswer": f"It is {answer}.",
            "isBalanced": balanced, "types": {"structural": structural, "semantic": semantic, "detailed": "x"}}


QUESTIONS = {
    "01": _q("n1", "yes", "verify", "attr"),
    "02": _q("n1", "no", "logical", "obj"),
    "03": _q("n2", "table", "query", "rel"),
    "04": _q("n2", "white", "query", "attr"),
    "05": _q("n3", "left", "choose", "rel"),
    "06": _q("n3", "no", "verify", "rel", balanced=False),  # not scored, as in the official eval
}


@pytest.fixture
def qfile(tmp_path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(QUESTIONS))
    return path


def test_score_gqa_breakdown(qfile):
    preds = {"01": "Yes", "02": "yes", "03": "Table.", "04": "black", "05": "left", "06": "whatever"}
    s = score_gqa(preds, load_gqa_questions(qfile))
    # correct: 01, 03, 05 out of the 5 balanced questions
    assert s["accuracy"] == 60.0 and s["num_questions"] == 5
    assert s["binary"] == pytest.approx(round(100 * 2 / 3, 2))  # verify/logical/choose: 01 ok, 02 wrong, 05 ok
    assert s["open"] == 50.0  # query: 03 ok, 04 wrong
    assert s["accuracyPerStructuralType"] == {"choose": 100.0, "logical": 0.0, "query": 50.0, "verify": 100.0}
    assert s["accuracyPerSemanticType"] == {"attr": 50.0, "obj": 0.0, "rel": 100.0}
    assert s["countPerStructuralType"] == {"choose": 1, "logical": 1, "query": 2, "verify": 1}
    assert s["countPerSemanticType"] == {"attr": 2, "obj": 1, "rel": 2}


def test_score_gqa_ids(qfile):
    questions = load_gqa_questions(qfile)
    full = {qid: "yes" for qid in QUESTIONS}
    assert score_gqa({k: v for k, v in full.items() if k != "06"}, questions)["num_questions"] == 5
    with pytest.raises(EvalInputError, match=r"pred\.json: 1 of 5 questions have no prediction \(e\.g\. \['03'\]\)"):
        score_gqa({k: v for k, v in full.items() if k != "03"}, questions, source="pred.json")
    with pytest.raises(EvalInputError, match=r"1 prediction\(s\) for question ids not in the ground truth .*'99'"):
        score_gqa({**full, "99": "yes"}, questions)


def test_score_gqa_needs_ground_truth(tmp_path):
    path = tmp_path / "test_balanced_questions.json"
    path.write_text(json.dumps({"7": {"imageId": "n1", "question": "What?"}}))
    with pytest.raises(EvalInputError, match=r"have no 'answer' or 'types' \(e\.g\. \['7'\]\)"):
        score_gqa({"7": "x"}, load_gqa_questions(path))


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"questionId": "1"', r"GQA predictions file .*p\.json is not valid JSON"),
        ('{"1": "yes"}', r"must be a JSON list of"),
        ('[{"questionId": 1, "prediction": "yes"}]', r"record \[0\] must be"),
        ('[{"questionId": "1", "answer": "yes"}]', r"record \[0\] must be"),
        ('[{"questionId": "1", "prediction": "a"}, {"questionId": "1", "prediction": "b"}]',
         r"questionId '1' is answered twice \(record \[1\]\)"),
    ],
)
def test_malformed_predictions(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(EvalInputError, match=message):
        load_gqa_predictions(path)


def test_malformed_questions(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([_q("n1", "yes", "verify", "attr")]))
    with pytest.raises(EvalInputError, match=r"q\.json must be a JSON object \{questionId: question\}"):
        load_gqa_questions(path)
    path.write_text(json.dumps({"5": {"question": "Is it?"}}))
    with pytest.raises(EvalInputError, match=r"question '5' needs str 'imageId'"):
        load_gqa_questions(path)
