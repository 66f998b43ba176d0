"""eval/vqav2.py and eval/gqa.py without a model: a fake answerer is injected, the sets are synthetic files in the
official formats. Covers resuming, sharding (flags and torchrun env), merging, scoring and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vitsplit_vlm.eval.cli import SHORT_ANSWER, main
from vitsplit_vlm.eval.gqa import load_gqa_questions, score_gqa
from vitsplit_vlm.eval.io import EvalInputError, atomic_write_json, read_jsonl, select_chunk
from vitsplit_vlm.eval.runner import EvalItem, image_batches
from vitsplit_vlm.eval.vqa_accuracy import normalize_answer
from vitsplit_vlm.eval.vqav2 import load_vqav2_annotations, score_vqav2

REPO = Path(__file__).resolve().parents[1]

# question i asks "q{i}?"; the fake model answers ANSWERS[i % 4] (raw, un-normalised on purpose)
ANSWERS = ["Yes.", "Two", "red-white", "a dog"]
HUMANS = [["yes"] * 10, ["2"] * 2 + ["3"] * 8, ["red white"] * 9 + ["red"], ["cat"] * 10]


class FakeModel:
    """Answers from the question text; records batches; can crash after some batches like a killed job."""

    def __init__(self, fail_after=None):
        self.batches, self.fail_after, self.builds = [], fail_after, 0

    def make(self):
        self.builds += 1
        return self.answer

    def answer(self, images, prompts):
        # decoded, in the file's own mode: the processor's to_rgb makes them RGB, as in training and chat
        assert all(isinstance(im, Image.Image) and im.getpixel((0, 0)) is not None for im in images)
        assert len(images) == len(prompts)
        assert all(p.endswith(f"?\n{SHORT_ANSWER}") for p in prompts)  # LLaVA-1.5: question, then instruction
        questions = [p.split("\n")[0] for p in prompts]
        if self.fail_after is not None and len(self.batches) == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches.append(list(questions))
        return [ANSWERS[int(q[1:-1]) % 4] for q in questions]

    @property
    def asked(self):
        return [q for b in self.batches for q in b]


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), 128).save(path)


def make_vqav2(root, n=10, subtype="val2014"):
    questions = [{"image_id": 100 + i // 2, "question": f"q{i}?", "question_id": 1000 + i} for i in range(n)]
    annotations = [{"question_id": q["question_id"], "image_id": q["image_id"], "question_type": f"type{i % 2}",
                    "answer_type": ["yes/no", "number", "other", "other"][i % 4],
                    "multiple_choice_answer": HUMANS[i % 4][0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                for j, a in enumerate(HUMANS[i % 4])]} for i, q in enumerate(questions)]
    image_split = "test2015" if subtype.startswith("test-dev") else subtype
    for q in questions:
        _image(root / "images" / f"COCO_{image_split}_{q['image_id']:012d}.jpg")
    qf, af = root / "questions.json", root / "annotations.json"
    qf.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype,
                              "license": {}, "questions": questions}))
    af.write_text(json.dumps({"info": {}, "annotations": annotations}))
    return qf, af


def vqa_run_args(root, qf, af, out="out", *extra):
    return ["run", "--model-path", str(root / "ckpt"), "--question-file", str(qf), "--image-dir",
            str(root / "images"), "--annotation-file", str(af), "--output-dir", str(root / out), "--batch-size", "3",
            "--no-progress", *extra]


def expected_vqa_metrics(af, n):
    preds = {1000 + i: normalize_answer(ANSWERS[i % 4]) for i in range(n)}
    return score_vqav2(preds, load_vqav2_annotations(af))


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_vqav2_run_writes_submission_and_official_scores(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path)
    model = FakeModel()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 0
    assert [len(b) for b in model.batches] == [2, 2, 2, 2, 2]  # whole images (2 questions each), <= --batch-size 3
    sub = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert sub == [{"question_id": 1000 + i, "answer": normalize_answer(ANSWERS[i % 4])} for i in range(10)]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    metrics = expected_vqa_metrics(af, 10)
    # per question 1.0, 0.6, 1.0 (gt "red-white" variants differ -> punctuation pass), 0.0
    assert metrics["overall"] == pytest.approx(round(100 * (3 * 1 + 3 * 0.6 + 2 * 1 + 2 * 0) / 10, 2))
    assert summary["metrics"] == metrics and summary["num_predictions"] == 10
    assert json.loads(capsys.readouterr().out)["metrics"] == metrics

    # `score` on the written submission reproduces the same numbers without a model
    sub_path = tmp_path / "out" / "submission.json"
    assert main("vqav2", ["score", "--predictions", str(sub_path), "--annotation-file", str(af)]) == 0
    scored = json.loads((tmp_path / "out" / "submission.summary.json").read_text())
    assert scored["metrics"] == metrics


def test_vqav2_resume_after_kill_and_torn_line(tmp_path):
    qf, af = make_vqav2(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        main("vqav2", vqa_run_args(tmp_path, qf, af), FakeModel(fail_after=2).make)
    chunk = tmp_path / "out" / "answers" / "chunk-000-of-001.jsonl"
    assert len(read_jsonl(chunk)) == 4 and not (tmp_path / "out" / "submission.json").exists()
    with chunk.open("a") as f:  # a write cut off by the kill
        f.write('{"question_id": 1004, "ans')
    assert len(read_jsonl(chunk)) == 4

    model = FakeModel()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 0
    assert model.asked == ["q4?", "q5?", "q6?", "q7?", "q8?", "q9?"]
    assert [r["question_id"] for r in read_jsonl(chunk)] == list(range(1000, 1010))
    assert chunk.read_text().endswith("}\n")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"] == expected_vqa_metrics(af, 10)

    model = FakeModel()  # everything done: no model is built at all
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 0
    assert model.builds == 0


def test_vqav2_chunks_by_flags_then_by_torchrun_env(tmp_path, monkeypatch, capsys):
    qf, af = make_vqav2(tmp_path, n=11)
    models = [FakeModel() for _ in range(3)]
    for k in (2, 0):
        assert main("vqav2", vqa_run_args(tmp_path, qf, af, "out", "--num-chunks", "3", "--chunk-idx",
                                                    str(k)), models[k].make) == 0
        assert not (tmp_path / "out" / "submission.json").exists()
    assert "questions left to other chunks" in capsys.readouterr().err
    assert main("vqav2", ["merge", "--question-file", str(qf), "--output-dir", str(tmp_path / "out")]) == 2
    assert "4 of 11 questions are not answered yet" in capsys.readouterr().err
    # the last chunk to finish merges
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), models[1].make) == 0
    # contiguous chunks of near-equal image counts (2 questions per image, 1 on the last), each question asked once
    assert [m.asked for m in models] == [[f"q{i}?" for i in r] for r in (range(0, 4), range(4, 8), range(8, 11))]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"] == expected_vqa_metrics(af, 11)

    # resuming the finished run with another chunk count finds every answer already there
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    model = FakeModel()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 0
    assert model.builds == 0


def test_image_batches_keep_images_whole():
    items = [EvalItem(i, Path(f"{image}.jpg"), f"q{i}") for i, image in enumerate("aabacccccd")]
    batches = [[it.question_id for it in b] for b in image_batches(items, 3)]
    # a's three questions (one asked after b's) together; c's five exceed the batch size and stay one batch
    assert batches == [[0, 1, 3], [2], [4, 5, 6, 7, 8], [9]]


def test_select_chunk_partitions():
    items = list(range(11))
    for n in (1, 2, 3, 5, 11, 13):
        chunks = [select_chunk(items, n, k) for k in range(n)]
        assert sum(chunks, []) == items
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_vqav2_test_dev_images_and_full_submission(tmp_path):
    qf, _ = make_vqav2(tmp_path, n=4, subtype="test-dev2015")  # images are COCO_test2015_*
    everyone = tmp_path / "test2015_questions.json"
    questions = json.loads(qf.read_text())["questions"]
    extra = [{"image_id": 1, "question": "x?", "question_id": 5}]
    everyone.write_text(json.dumps({"data_subtype": "test2015", "questions": questions + extra}))
    args = ["run", "--model-path", str(tmp_path), "--question-file", str(qf), "--image-dir", str(tmp_path / "images"),
            "--output-dir", str(tmp_path / "out"), "--submission-question-file", str(everyone), "--no-progress"]
    assert main("vqav2", args, FakeModel().make) == 0
    sub = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert sub == [{"question_id": 1000 + i, "answer": normalize_answer(ANSWERS[i])} for i in range(4)] + [
        {"question_id": 5, "answer": ""}]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"] is None


def test_vqav2_missing_images_fail_before_anything_is_written(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path, n=4)
    (tmp_path / "images" / "COCO_val2014_000000000101.jpg").unlink()
    model = FakeModel()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 2
    err = capsys.readouterr().err
    assert "error: 2 of 4 images not found" in err and "COCO_val2014_000000000101.jpg" in err
    assert "--image-name-format 'COCO_{split}_{image_id:012d}.jpg'" in err
    assert model.builds == 0 and not (tmp_path / "out").exists()

    # a custom naming scheme finds them
    for p in (tmp_path / "images").iterdir():
        p.rename(p.with_name(p.name.split("_")[-1].lstrip("0")))
    _image(tmp_path / "images" / "101.jpg")
    assert main("vqav2", vqa_run_args(tmp_path, qf, af, "out", "--image-name-format", "{image_id}.jpg"),
                      model.make) == 0
    assert main("vqav2", vqa_run_args(tmp_path, qf, af, "o2", "--image-name-format", "{id}.jpg"),
                      model.make) == 2
    assert "--image-name-format '{id}.jpg' is invalid" in capsys.readouterr().err


def test_vqav2_unreadable_image_keeps_finished_batches(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path, n=8)
    (tmp_path / "images" / "COCO_val2014_000000000103.jpg").write_bytes(b"not a jpeg")  # questions 6, 7
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), FakeModel().make) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "out" / "answers" / "chunk-000-of-001.jsonl")) == 6


def test_vqav2_refuses_to_mix_runs_and_wrong_annotations(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path, n=4)
    assert main("vqav2", vqa_run_args(tmp_path, qf, af, "out", "--limit", "2"), FakeModel().make) == 0
    assert len(json.loads((tmp_path / "out" / "submission.json").read_text())) == 2
    assert main("vqav2", vqa_run_args(tmp_path, qf, af, "out", "--instruction", "Answer."),
                      FakeModel().make) == 2
    assert "holds answers made with other settings" in capsys.readouterr().err
    other = tmp_path / "other_annotations.json"
    anns = json.loads(af.read_text())
    other.write_text(json.dumps({"annotations": anns["annotations"][:2]}))
    assert main("vqav2", vqa_run_args(tmp_path, qf, other, "o2"), FakeModel().make) == 2
    assert "2 questions of" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    "predictions, message",
    [
        ('[{"question_id": 1000, "answer": "yes"', "is not valid JSON"),
        ('[{"question_id": 1000}]', r"record [0] must be"),
        ('[{"question_id": 1000, "answer": "yes"}, {"question_id": 77, "answer": "no"}]',
         "1 prediction(s) for question ids not in the ground truth (e.g. [77])"),
        ('[{"question_id": 1000, "answer": "yes"}]', "3 of 4 questions have no prediction"),
    ],
)
def test_vqav2_score_bad_predictions_write_nothing(tmp_path, capsys, predictions, message):
    _, af = make_vqav2(tmp_path, n=4)
    pf = tmp_path / "preds.json"
    pf.write_text(predictions)
    assert main("vqav2", ["score", "--predictions", str(pf), "--annotation-file", str(af)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(pf) in err
    assert not (tmp_path / "preds.summary.json").exists()


def test_vqav2_score_subset_by_question_file(tmp_path):
    qf, af = make_vqav2(tmp_path, n=4)
    sub = json.loads(qf.read_text())
    sub["questions"] = sub["questions"][:1]
    qsub = tmp_path / "q1.json"
    qsub.write_text(json.dumps(sub))
    pf = tmp_path / "preds.json"
    out = tmp_path / "s.json"
    # ten identical "yes": the official code compares without normalising, so "Yes" scores 0 and "yes" 100
    for answer, expected in (("Yes", 0.0), ("yes", 100.0)):
        pf.write_text(json.dumps([{"question_id": 1000, "answer": answer}]))
        assert main("vqav2", ["score", "--predictions", str(pf), "--annotation-file", str(af),
                              "--question-file", str(qsub), "--summary-file", str(out)]) == 0
        assert json.loads(out.read_text())["metrics"]["overall"] == expected


def make_gqa(root, n=6, with_answers=True):
    kinds = [("yes", "verify", "attr"), ("no", "logical", "obj"), ("table", "query", "rel")]
    questions = {}
    for i in range(n):
        q = {"imageId": f"n{i // 2}", "question": f"q{i}?", "isBalanced": True}
        if with_answers:
            a, s, m = kinds[i % 3]
            q |= {"answer": a, "fullAnswer": f"It is {a}.", "types": {"structural": s, "semantic": m,
                                                                       "detailed": "d"}}
        questions[f"2{i:04d}"] = q
        _image(root / "images" / f"n{i // 2}.jpg")
    qf = root / "testdev_balanced_questions.json"
    qf.write_text(json.dumps(questions))
    return qf


def test_gqa_run_and_score(tmp_path):
    qf = make_gqa(tmp_path)
    args = ["run", "--model-path", str(tmp_path), "--question-file", str(qf), "--image-dir", str(tmp_path / "images"),
            "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main("gqa", args, FakeModel().make) == 0
    preds = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # raw answers "Yes.", "Two", "red-white", "a dog", ... -> lowercase, no trailing period
    assert preds[:4] == [{"questionId": "20000", "prediction": "yes"}, {"questionId": "20001", "prediction": "two"},
                         {"questionId": "20002", "prediction": "red-white"},
                         {"questionId": "20003", "prediction": "a dog"}]
    metrics = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]
    assert metrics == score_gqa({p["questionId"]: p["prediction"] for p in preds}, load_gqa_questions(qf))
    assert metrics["accuracy"] == pytest.approx(round(100 / 6, 2))  # only question 0 is right
    assert metrics["accuracyPerStructuralType"] == {"logical": 0.0, "query": 0.0, "verify": 50.0}

    out = tmp_path / "gqa_summary.json"
    assert main("gqa", ["score", "--predictions", str(tmp_path / "out" / "predictions.json"),
                              "--question-file", str(qf), "--summary-file", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == metrics


def test_gqa_without_ground_truth_only_writes_predictions(tmp_path, capsys):
    qf = make_gqa(tmp_path, n=3, with_answers=False)
    args = ["run", "--model-path", str(tmp_path), "--question-file", str(qf), "--image-dir", str(tmp_path / "images"),
            "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main("gqa", args, FakeModel().make) == 0
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 3
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"] is None
    preds = tmp_path / "out" / "predictions.json"
    assert main("gqa", ["score", "--predictions", str(preds), "--question-file", str(qf)]) == 2
    assert "only files with ground truth" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["-1", "0", "x"])
def test_limit_must_be_positive(tmp_path, capsys, limit):
    qf, af = make_vqav2(tmp_path, n=2)
    with pytest.raises(SystemExit) as e:
        main("vqav2", vqa_run_args(tmp_path, qf, af, "out", "--limit", limit), FakeModel().make)
    assert e.value.code == 2
    assert f"argument --limit: must be a positive integer, got '{limit}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_question_file_is_an_error_not_a_zero_score(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path, n=0)
    model = FakeModel()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af), model.make) == 2
    assert capsys.readouterr().err == (f"error: {qf} holds no vqav2 questions to evaluate; pass the benchmark's "
                                       "question file (`miniset --out DIR` writes a small one).\n")
    assert model.builds == 0 and not (tmp_path / "out").exists()


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert main("nope", ["--help"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown benchmark 'nope'; choose one of vqav2, gqa")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "f.json", {"old": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"new": Boom()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_corrupt_jsonl_line_is_a_clear_error(tmp_path):
    chunk = tmp_path / "answers" / "chunk-000-of-001.jsonl"
    chunk.parent.mkdir()
    chunk.write_text('{"question_id": 1, "answer": "a"}\n{oops\n{"question_id": 2, "answer": "b"}\n')
    with pytest.raises(EvalInputError, match=r"chunk-000-of-001\.jsonl:2 is not valid JSON"):
        read_jsonl(chunk)


def test_scripts_run_from_the_command_line(tmp_path):
    qf = make_gqa(tmp_path, n=3)
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"questionId": f"2{i:04d}", "prediction": "yes"} for i in range(3)]))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    res = subprocess.run([sys.executable, str(REPO / "eval" / "gqa.py"), "score", "--predictions", str(preds),
                          "--question-file", str(qf)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["metrics"]["accuracy"] == pytest.approx(round(100 / 3, 2))
    res = subprocess.run([sys.executable, str(REPO / "eval" / "vqav2.py"), "score", "--predictions", str(preds),
                          "--annotation-file", str(tmp_path / "missing.json")], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: VQAv2 predictions file")


# ------------------------------------------------------------------------------------------ real tiny model


def test_model_path_without_a_checkpoint_is_a_usage_error(tmp_path, capsys):
    qf, af = make_vqav2(tmp_path, n=2)
    (tmp_path / "ckpt").mkdir()
    assert main("vqav2", vqa_run_args(tmp_path, qf, af)) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'ckpt'}: no config.json; pass a directory written by save_pretrained (a trained or "
        "converted checkpoint)\n"
    )


def test_end_to_end_with_a_tiny_vlm(tiny_vlm_dir, tmp_path):
    """Batched, chunked CLI answers equal one-prompt-at-a-time generation from a hand-written LLaVA-1.5 prompt."""
    import torch

    from vitsplit_vlm.conversation import VICUNA_SYSTEM
    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor

    qf, af = make_vqav2(tmp_path, n=5)
    questions = json.loads(qf.read_text())["questions"]
    for i, q in enumerate(questions):  # distinct images and question lengths, so left padding is exercised
        Image.new("RGB", (20 + 7 * i, 30), (40 * i, 255 - 30 * i, 90)).save(
            tmp_path / "images" / f"COCO_val2014_{q['image_id']:012d}.jpg")
        q["question"] = "What is shown" + " here" * i + "?"
    qf.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    base = ["run", "--model-path", str(tiny_vlm_dir), "--question-file", str(qf), "--image-dir",
            str(tmp_path / "images"), "--annotation-file", str(af), "--output-dir", str(tmp_path / "out"),
            "--batch-size", "2", "--max-new-tokens", "5", "--no-progress"]
    assert main("vqav2", base + ["--num-chunks", "2", "--chunk-idx", "1"]) == 0
    assert main("vqav2", base + ["--num-chunks", "2", "--chunk-idx", "0"]) == 0
    raw = {r["question_id"]: r["answer"] for r in read_jsonl(tmp_path / "out" / "answers" / "chunk-000-of-002.jsonl")
           + read_jsonl(tmp_path / "out" / "answers" / "chunk-001-of-002.jsonl")}
    assert sorted(raw) == [q["question_id"] for q in questions]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_predictions"] == 5 and 0.0 <= summary["metrics"]["overall"] <= 100.0

    model = VitSplitLlavaForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()
    processor = VitSplitLlavaProcessor.from_pretrained(tiny_vlm_dir)
    for q in questions:
        prompt = f"{VICUNA_SYSTEM} USER: <image>\n{q['question']}\n{SHORT_ANSWER} ASSISTANT:"
        with Image.open(tmp_path / "images" / f"COCO_val2014_{q['image_id']:012d}.jpg") as im:
            inputs = processor(text=[prompt], images=[im.convert("RGB")])
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert raw[q["question_id"]] == expected
    assert len(set(raw.values())) > 1  # the answers really depend on the input
