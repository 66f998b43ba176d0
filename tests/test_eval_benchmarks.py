"""VizWiz, ScienceQA-IMG, POPE and MMBench: answer parsing and scores worked out by hand from LLaVA's scorers
(haotian-liu/LLaVA c121f04) and VLMEvalKit's matcher, the run / merge / score CLI on each seeded mini-set with a
scripted answerer, and bad input failing in one line before any model work."""

import base64
import json

import pytest

from vitsplit_vlm.eval import BENCHMARKS, get_benchmark
from vitsplit_vlm.eval.cli import main
from vitsplit_vlm.eval.io import EvalInputError
from vitsplit_vlm.eval.mmbench import can_infer, load_mmbench, score_mmbench
from vitsplit_vlm.eval.pope import load_pope_labels, load_pope_questions, parse_yes_no, score_pope
from vitsplit_vlm.eval.scienceqa import load_sqa_problems, parse_letter, score_sqa
from vitsplit_vlm.eval.vizwiz import load_vizwiz, score_vizwiz

NEW = ("vizwiz", "scienceqa", "pope", "mmbench")


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


class Scripted:
    """Answers in item order from a list (the runner answers a single chunk in question-file order)."""

    def __init__(self, answers):
        self.answers, self.prompts, self.builds = list(answers), [], 0

    def make(self):
        self.builds += 1
        return self.answer

    def answer(self, images, prompts):
        self.prompts += prompts
        return [self.answers.pop(0) for _ in prompts]


def _miniset(name, tmp_path):
    return get_benchmark(name).write_miniset(tmp_path / name, 0)


def _run(name, tmp_path, answers, *extra):
    args = _miniset(name, tmp_path)
    model = Scripted(answers)
    out = tmp_path / name / "out"
    rc = main(name, ["run", "--model-path", str(tmp_path), *args, "--output-dir", str(out), "--batch-size", "5",
                     "--no-progress", *extra], model.make)
    return rc, model, out


# ------------------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("NO", "yes"), ("No!", "yes"), ("Nope", "yes"), ("", "yes"),
    ("not sure", "no"), ("yes, but no", "no"), ("No.", "no"), ("Yes. No.", "yes"), ("No, there is not.", "no"),
    ("There is no dog", "no"), ("no\nway", "yes"),  # split on " " only
])
def test_pope_parses_as_llava(text, parsed):
    assert parse_yes_no(text) == parsed


def test_pope_scores_by_hand(tmp_path):
    paths = _miniset("pope", tmp_path)
    qf, adir = paths[1], paths[5]
    questions = load_pope_questions(qf)
    labels = load_pope_labels(questions, adir)
    assert [labels[q.question_id] for q in questions] == ["yes", "no"] * 6
    # adversarial (labels y n y n): answers y y n n -> TP1 FP1 TN1 FN1; popular: all "No" -> TN2 FN2; random: right
    answers = dict(zip(range(1, 13), ["Yes", "Yes.", "No", "no"] + ["No"] * 4 + ["Yes", "No", "Yes", "No"]))
    m = score_pope(answers, questions, labels)
    assert m["adversarial"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5,
                                "TP": 1, "FP": 1, "TN": 1, "FN": 1, "num_questions": 4}
    assert m["popular"]["precision"] is None and m["popular"]["f1"] is None  # no "yes": LLaVA divides by zero
    assert (m["popular"]["accuracy"], m["popular"]["recall"], m["popular"]["yes_ratio"]) == (0.5, 0.0, 0.0)
    assert m["random"]["f1"] == 1.0 and m["random"]["accuracy"] == 1.0


def test_pope_run_merge_score(tmp_path, capsys):
    answers = ["Yes", "No"] * 6
    rc, model, out = _run("pope", tmp_path, answers)
    assert rc == 0 and model.builds == 1
    assert model.prompts[0].endswith("in the image?\nAnswer the question using a single word or phrase.")
    summary = json.loads((out / "summary.json").read_text())
    assert {c: m["accuracy"] for c, m in summary["metrics"].items()} == {"adversarial": 1.0, "popular": 1.0,
                                                                         "random": 1.0}
    lines = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert lines[1] == {"question_id": 2, "prompt": model.prompts[1], "text": "No", "category": "adversarial"}
    paths = _miniset("pope", tmp_path)
    assert main("pope", ["score", "--predictions", str(out / "answers.jsonl"), "--question-file", paths[1],
                         "--annotation-dir", paths[5]]) == 0
    assert json.loads((out / "answers.summary.json").read_text())["metrics"] == summary["metrics"]


def test_pope_labels_out_of_order_fail_before_model_work(tmp_path, capsys):
    paths = _miniset("pope", tmp_path)
    label_file = tmp_path / "pope" / "coco" / "coco_pope_random.json"
    rows = label_file.read_text().splitlines()
    label_file.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")
    model = Scripted([])
    assert main("pope", ["run", "--model-path", str(tmp_path), *paths, "--output-dir", str(tmp_path / "o")],
                model.make) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: POPE label file {label_file}: line 1 (") and "does not label random question 9" in err
    assert model.builds == 0 and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("E", "E"), ("B. green", "B"), ("B.", None), ("b", None), ("B.green", None),
    ("The answer is C.", "C"), ("I think The answer is D!", "D"), ("The answer is C. The answer is D.", None),
    ("(A)", None), ("", None),
])
def test_scienceqa_letter_as_llava(text, letter):
    assert parse_letter(text) == letter


def test_scienceqa_prompt_subset_and_breakdowns(tmp_path):
    args = _miniset("scienceqa", tmp_path)
    problems = load_sqa_problems(args[1], args[3], "test")
    assert len(problems) == 12 and all(p.image for p in problems)  # the two text-only problems are left out
    p0 = problems[0]
    assert p0.text == (f"Context: {p0.hint}\n{p0.question}\n"
                       + "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(p0.choices)))
    assert "Context:" not in problems[1].text
    right = {p.pid: "ABCDE"[p.answer] for p in problems}
    wrong = dict(right, **{problems[0].pid: "E", problems[1].pid: f"{'ABCDE'[problems[1].answer]}."})
    m = score_sqa(wrong, problems)
    assert m["accuracy"] == round(100 * 10 / 12, 2)
    assert m["subject"] == {"LAN": 100.0, "NAT": 75.0, "SOC": 75.0}  # subjects cycle NAT SOC LAN: 0 / 1 wrong
    assert m["context_modality"] == {"IMG": round(100 * 10 / 12, 2), "TXT": 75.0}  # hints on 0, 3, 6, 9
    assert m["grade"] == {"G1-6": round(100 * 5 / 7, 2), "G7-12": 100.0}  # grades 2-11, 2, 3: seven in G1-6


def test_scienceqa_run_writes_llava_answers_and_scores(tmp_path):
    args = _miniset("scienceqa", tmp_path)
    problems = load_sqa_problems(args[1], args[3], "test")
    rc, model, out = _run("scienceqa", tmp_path, ["ABCDE"[p.answer] for p in problems])
    assert rc == 0
    assert model.prompts[0] == problems[0].text + "\nAnswer with the option's letter from the given choices directly."
    assert json.loads((out / "summary.json").read_text())["metrics"]["accuracy"] == 100.0
    first = json.loads((out / "answers.jsonl").read_text().splitlines()[0])
    assert first == {"question_id": problems[0].pid, "prompt": "<image>\n" + problems[0].text,
                     "text": "ABCDE"[problems[0].answer]}


# -------------------------------------------------------------------------------------------------- VizWiz


def test_vizwiz_run_submission_and_val_accuracy(tmp_path):
    args = _miniset("vizwiz", tmp_path)
    questions = load_vizwiz(args[1])
    # the majority human answer, raw as a model writes it ("Unanswerable", "Red.")
    raw = [max(set(q.answers), key=q.answers.count).capitalize() + "." for q in questions]
    rc, model, out = _run("vizwiz", tmp_path, raw)
    assert rc == 0
    assert model.prompts[3] == ("What does the label on the box say?\nWhen the provided information is insufficient, "
                                "respond with 'Unanswerable'.\nAnswer the question using a single word or phrase.")
    sub = json.loads((out / "submission.json").read_text())
    assert sub[3] == {"image": "VizWiz_val_00000003.jpg", "answer": "unanswerable"}
    expected = score_vizwiz({s["image"]: s["answer"] for s in sub}, questions)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics == expected and metrics["answerable"]["unanswerable"] == 100.0
    assert main("vizwiz", ["score", "--predictions", str(out / "submission.json"), "--question-file", args[1]]) == 0


def test_vizwiz_accuracy_is_the_official_one(tmp_path):
    q = load_vizwiz(_write(tmp_path / "v.json", [
        {"image": "a.jpg", "question": "?", "answers": [{"answer": "unanswerable"}] * 7 + [{"answer": "Red"}] * 3,
         "answer_type": "unanswerable", "answerable": 0}]))
    assert score_vizwiz({"a.jpg": "red"}, q)["overall"] == 90.0  # "Red" normalised since humans differ
    assert score_vizwiz({"a.jpg": "unanswerable"}, q)["overall"] == 100.0
    with pytest.raises(EvalInputError, match="only val.json can be scored"):
        score_vizwiz({"a.jpg": "x"}, load_vizwiz(_write(tmp_path / "t.json", [{"image": "a.jpg", "question": "?"}])))


# ------------------------------------------------------------------------------------------------- MMBench


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("B. green", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("A", "A"),
    ("A large square is here", None),  # "A" may be the article (more than 3 words); no option text either
    ("A red square is here", "A"),  # ... but the text of option A ("red") is in it
    ("green", "B"), ("red or green", None), ("", None), ("A B", None),
])
def test_mmbench_can_infer(text, letter):
    assert can_infer(text, {"A": "red", "B": "green", "C": "blue", "D": "purple"}) == letter


def test_mmbench_circular_scoring(tmp_path):
    args = _miniset("mmbench", tmp_path)
    questions = load_mmbench(args[1])
    assert {q.index for q in questions if q.index >= 10**6}  # rotations present
    right = {q.index: q.answer for q in questions}
    assert score_mmbench(right, questions)["circular_accuracy"] == 100.0
    # question 0 wrong in one rotation only, question 1 answered with its option text -> still right
    q1 = [q for q in questions if q.index == 1][0]
    answers = {**right, 10**6: "A" if right[10**6] != "A" else "B", 1: q1.options[q1.answer]}
    m = score_mmbench(answers, questions)
    assert m["circular_accuracy"] == round(100 * 7 / 8, 2) and m["num_questions"] == 8
    answers.pop(10**6 + 2)  # every question has at least two options, so this rotation exists
    assert score_mmbench(answers, questions)["circular_accuracy"] == round(100 * 6 / 8, 2)  # missing row fails


def test_mmbench_run_prompt_and_submission(tmp_path):
    pytest.importorskip("openpyxl")
    import pandas as pd

    args = _miniset("mmbench", tmp_path)
    questions = load_mmbench(args[1])
    rc, model, out = _run("mmbench", tmp_path, [q.answer + "\x01" * (i == 0) for i, q in enumerate(questions)])
    assert rc == 0
    q0 = questions[0]
    assert model.prompts[0] == (f"{q0.hint}\n{q0.question}" + "".join(f"\n{k}. {v}" for k, v in q0.options.items())
                                + "\nAnswer with the option's letter from the given choices directly.")
    # row 0 answers its letter + "\x01": no letter is inferable, its question fails (7 of 8); the sheet drops \x01
    assert json.loads((out / "summary.json").read_text())["metrics"]["circular_accuracy"] == 87.5
    sub = pd.read_excel(out / "submission.xlsx")
    assert list(sub.columns[:7]) == ["index", "question", "A", "B", "C", "D", "prediction"]
    assert sub["prediction"].tolist() == [q.answer for q in questions]


def test_mmbench_bad_base64_image_fails_before_model_work(tmp_path, capsys):
    args = _miniset("mmbench", tmp_path)
    tsv = tmp_path / "mmbench" / "mmbench_dev_mini.tsv"
    lines = tsv.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[10] = base64.b64encode(b"not an image").decode()
    lines[2] = "\t".join(cells)
    tsv.write_text("\n".join(lines) + "\n")
    model = Scripted([])
    assert main("mmbench", ["run", "--model-path", str(tmp_path), *args, "--output-dir", str(tmp_path / "o")],
                model.make) == 2
    assert capsys.readouterr().err.startswith(f"error: MMBench TSV {tsv}: line 3 (index ")
    assert model.builds == 0


# ---------------------------------------------------------------------------------------------- every benchmark


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


@pytest.mark.parametrize("name", NEW)
def test_missing_images_and_malformed_files_fail_in_one_line(name, tmp_path, capsys):
    args = _miniset(name, tmp_path)
    qf = tmp_path / name / args[1].split("/")[-1]
    run = ["run", "--model-path", str(tmp_path), *args, "--output-dir", str(tmp_path / "o")]
    if name != "mmbench":  # its images are inside the TSV
        image = sorted(p for p in (tmp_path / name).rglob("*") if p.suffix in (".jpg", ".png"))[0]
        image.unlink()
        assert main(name, run, Scripted([]).make) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: 1 of ") and "images not found" in err and err.count("\n") == 1
    qf.write_text("{broken")
    assert main(name, run, Scripted([]).make) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(qf) in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_miniset_command_and_help_as_typed(name, tmp_path, capsys):
    assert main(name, ["miniset", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"python eval/{name}.py run --model-path CKPT --question-file {tmp_path / 'm'}")
    with pytest.raises(SystemExit) as e:
        main(name, ["run", "--help"])
    assert e.value.code == 0 and "--instruction" in capsys.readouterr().out


@pytest.mark.parametrize("name", BENCHMARKS)
def test_commands_as_typed(name, tmp_path):
    """`python eval/<name>.py miniset` and `run --help` as a user types them (no model is imported for these)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    made = subprocess.run([sys.executable, f"eval/{name}.py", "miniset", "--out", str(tmp_path / "m")], cwd=repo,
                          env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"python eval/{name}.py run --model-path CKPT --question-file ")
    helped = subprocess.run([sys.executable, f"eval/{name}.py", "run", "--help"], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--output-dir" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "vitsplit_vlm.eval", name, "run", "--limit", "-1"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--limit: must be a positive integer, got '-1'" in bad.stderr


@pytest.mark.parametrize("name", NEW)
def test_tiny_checkpoint_answers_each_miniset(name, tiny_vlm_dir, tmp_path, capsys):
    """The mini-set's printed `run` command with a real (tiny, random) checkpoint: batched, merged, scored."""
    import shlex

    if name == "mmbench":
        pytest.importorskip("openpyxl")
    assert main(name, ["miniset", "--out", str(tmp_path / "m")]) == 0
    command = shlex.split(capsys.readouterr().out)[3:]  # after "python eval/<name>.py run"
    command[command.index("CKPT")] = str(tiny_vlm_dir)
    assert main(name, ["run", *command, "--limit", "6", "--batch-size", "4", "--max-new-tokens", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["benchmark"] == name and summary["num_predictions"] == 6 and summary["metrics"] is not None


def test_unknown_ids_are_named(tmp_path, capsys):
    args = _miniset("pope", tmp_path)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "prompt": "", "text": "yes"}) + "\n" for i in range(1, 14)))
    assert main("pope", ["score", "--predictions", str(answers), "--question-file", args[1],
                         "--annotation-dir", args[5]]) == 2
    assert capsys.readouterr().err == (f"error: {answers}: 1 prediction(s) for question ids not in the ground truth "
                                       "(e.g. [13]). Score against the matching question/annotation file.\n")
    sqa = _miniset("scienceqa", tmp_path)
    splits = json.loads(open(sqa[3]).read())
    splits["test"].append("9999")
    _write(tmp_path / "splits.json", splits)
    with pytest.raises(EvalInputError, match=r"pid_splits file .*splits\.json: pid '9999' is not in .*problems\.json"):
        load_sqa_problems(sqa[1], tmp_path / "splits.json", "test")
