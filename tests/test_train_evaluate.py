"""The post-training evaluation's scoring: question types from any LLaVA-JSON val file, majority-answer baselines."""
import json

import pytest

from vitsplit_vlm.data.synthetic import vqa_record
from vitsplit_vlm.train.evaluate import answer_type, load_eval_records, score


def _write(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_types_come_from_the_record_else_from_the_reference_answer(tmp_path):
    rows = [
        {**vqa_record("a", "x.png", [("What shape?", "circle")]), "question_type": "shape"},
        vqa_record("b", "x.png", [("Is there a cat?", "Yes")]),
        vqa_record("c", "x.png", [("How many?", "two")]),  # number words count as numbers, as VQAv2 normalises them
        vqa_record("d", "x.png", [("What colour?", "red")]),
    ]
    records = load_eval_records(_write(tmp_path / "val.json", rows), tmp_path)
    assert [(r.record_id, r.question_type) for r in records] == [("a", "shape"), ("b", "yes/no"), ("c", "number"), ("d", "other")]
    assert [answer_type(a) for a in ("no", "3", "the 3rd", "blue")] == ["yes/no", "number", "other", "other"]


def test_bad_question_type_names_the_record(tmp_path):
    rows = [{**vqa_record("q7", "x.png", [("What shape?", "circle")]), "question_type": 3}]
    with pytest.raises(ValueError, match=r"val\.json: eval record q7: question_type must be a non-empty string, got 3"):
        load_eval_records(_write(tmp_path / "val.json", rows), tmp_path)


def test_accuracy_and_majority_baseline_per_type(tmp_path):
    qas = [("shape", "circle", "circle"), ("shape", "circle", "square"), ("shape", "square", "square"),
           ("shape", "triangle", "circle"), (None, "yes", "no"), (None, "no", "no")]
    rows = [{**vqa_record(str(i), "x.png", [("q?", ref)]), **({"question_type": t} if t else {})}
            for i, (t, ref, _) in enumerate(qas)]
    records = load_eval_records(_write(tmp_path / "val.json", rows), tmp_path)
    result = score(records, {str(i): pred for i, (_, _, pred) in enumerate(qas)})
    # shape: 2 of 4 right; the commonest reference is circle (2 of 4). yes/no: 1 of 2; yes and no tie, "no" wins by name.
    assert result.accuracy == pytest.approx(100 * 3 / 6) and result.num_questions == 6
    assert result.baseline == pytest.approx(100 * (2 + 1) / 6)
    shape, yes_no = result.per_type["shape"], result.per_type["yes/no"]
    assert (shape.accuracy, shape.num_questions, shape.majority_answer, shape.baseline) == (50.0, 4, "circle", 50.0)
    assert (yes_no.accuracy, yes_no.num_questions, yes_no.majority_answer, yes_no.baseline) == (50.0, 2, "no", 50.0)
    report = result.report("val.json")
    assert report.splitlines()[0] == ("held-out accuracy 50.0% on 6 questions (val.json); "
                                      "baseline (majority answer per question type) 50.0%")
    assert "  shape      50.0%  (baseline  50.0%: 'circle'; 4 questions)" in report
