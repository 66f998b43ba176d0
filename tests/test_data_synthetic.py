import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitsplit_vlm.data import synthetic
from vitsplit_vlm.data.llava_json import load_llava_json, scan_records

QTYPE_PREFIX = {"What color": "color", "What shape": "shape", "How many": "count", "Is there": "exist", "Is the": "position"}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def qtype(question: str) -> str:
    return next(t for prefix, t in QTYPE_PREFIX.items() if question.startswith(prefix))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, num_train=60, num_val=20, image_size=56, seed=3)
    return out


def load(path: Path):
    return json.loads(path.read_text())


def test_same_seed_same_bytes_other_seed_differs(data, tmp_path):
    synthetic.generate(tmp_path / "again", num_train=60, num_val=20, image_size=56, seed=3)
    synthetic.generate(tmp_path / "other", num_train=60, num_val=20, image_size=56, seed=4)
    assert tree_digest(tmp_path / "again") == tree_digest(data)
    assert load(tmp_path / "other" / "train.json") != load(data / "train.json")


def test_val_is_held_out_and_independent_of_train_size(data, tmp_path):
    synthetic.generate(tmp_path / "small", num_train=5, num_val=20, image_size=56, seed=3)
    assert load(tmp_path / "small" / "val.json") == load(data / "val.json")
    train_images = {r["image"] for r in load(data / "train.json") if "image" in r}
    val_images = {r["image"] for r in load(data / "val.json")}
    assert len(train_images) == 60 and len(val_images) == 20 and not train_images & val_images
    def pixels(names):
        return {hashlib.sha256(np.asarray(Image.open(data / "images" / n).convert("RGB")).tobytes()).hexdigest() for n in names}

    assert not pixels(train_images) & pixels(val_images)


def test_llava_files_are_valid_and_shaped_as_specified(data):
    for name in ("train.json", "val.json", "stage1.json"):
        scan = scan_records(load_llava_json(data / name, cache_dir=data / "hf"), data / "images")
        assert scan.bad == [], name
    train = load(data / "train.json")
    text_only = [r for r in train if "image" not in r]
    assert len(text_only) == 1 and all("<image>" not in t["value"] for t in text_only[0]["conversations"])
    turns = Counter(len(r["conversations"]) // 2 for r in train if "image" in r)
    # up to one question per type; fewer where a type has no unambiguous question or would give another's answer away
    assert set(turns) <= {1, 2, 3, 4, 5} and sum(n * k for n, k in turns.items()) > 2.5 * 60
    first = train[0]["conversations"]
    assert first[0]["value"].startswith("<image>\n") and first[0]["value"].endswith("\n" + synthetic.SHORT_ANSWER_PROMPT)
    assert all(len(r["conversations"]) == 2 for r in load(data / "val.json"))


def test_questions_per_image_caps_the_conversations(tmp_path):
    synthetic.generate(tmp_path, num_train=30, num_val=2, image_size=56, seed=3, questions_per_image=1)
    assert {len(r["conversations"]) for r in load(tmp_path / "train.json")} == {2}
    with pytest.raises(ValueError, match=r"^questions_per_image=6: must be 1-5 \(one per question type\)\.$"):
        synthetic.generate(tmp_path, num_train=1, num_val=1, questions_per_image=6)


def test_multi_turn_records_do_not_give_answers_away(data):
    for record in load(data / "train.json"):
        conv = record["conversations"]
        questions = [t["value"].split("\n")[-2].rstrip("?").split() for t in conv[0::2]]
        answers = [t["value"] for t in conv[1::2]]
        for i, answer in enumerate(answers):
            assert not any(answer in q for j, q in enumerate(questions) if j != i), record["id"]


def test_vqav2_and_gqa_files_match_val(data):
    val = load(data / "val.json")
    questions = load(data / "vqav2" / "questions.json")
    annotations = load(data / "vqav2" / "annotations.json")
    gqa = load(data / "gqa" / "testdev_balanced_questions.json")
    assert questions["data_subtype"] == "val2014" and "info" in questions
    assert len(val) == len(questions["questions"]) == len(annotations["annotations"]) == len(gqa)
    for record, q, a in zip(val, questions["questions"], annotations["annotations"]):
        assert set(q) == {"image_id", "question", "question_id"}
        qid, question, answer = q["question_id"], q["question"], record["conversations"][1]["value"]
        assert record["id"] == str(qid) == str(a["question_id"]) and a["image_id"] == q["image_id"]
        assert record["conversations"][0]["value"] == f"<image>\n{question}\n{synthetic.SHORT_ANSWER_PROMPT}"
        assert a["question_type"] == qtype(question)
        assert a["answer_type"] == {"exist": "yes/no", "count": "number"}.get(a["question_type"], "other")
        assert a["multiple_choice_answer"] == answer
        assert a["answers"] == [{"answer": answer, "answer_confidence": "yes", "answer_id": j} for j in range(1, 11)]
        coco = data / "vqav2" / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg"
        assert coco.read_bytes() == (data / "images" / record["image"]).read_bytes()
        g = gqa[str(qid)]
        assert (g["question"], g["answer"]) == (question, answer)
        assert (data / "images" / f"{g['imageId']}.jpg").samefile(data / "images" / record["image"])
        assert g["types"]["structural"] in {"query", "verify", "logical", "choose", "compare"}
        assert g["types"]["semantic"] in {"attr", "obj", "rel", "cat", "global"}
        assert answer in g["fullAnswer"].lower()


def test_chance_accuracy_is_train_majority_scored_on_val(data):
    stats = load(data / "stats.json")
    train_answers: dict[str, Counter] = {}
    for record in load(data / "train.json"):
        if "image" in record:
            conv = record["conversations"]
            for q, a in zip(conv[0::2], conv[1::2]):
                train_answers.setdefault(qtype(q["value"].removeprefix("<image>\n")), Counter())[a["value"]] += 1
    val = [(a["question_type"], a["multiple_choice_answer"]) for a in load(data / "vqav2" / "annotations.json")["annotations"]]
    hits = 0
    for t, entry in stats["question_types"].items():
        counts = train_answers[t]
        assert counts[entry["majority_answer"]] == max(counts.values())
        answers = [a for vt, a in val if vt == t]
        assert entry["num_val"] == len(answers)
        assert entry["chance_accuracy"] == pytest.approx(answers.count(entry["majority_answer"]) / len(answers))
        hits += answers.count(entry["majority_answer"])
    assert stats["chance_accuracy"] == pytest.approx(hits / len(val))
    assert set(stats["answer_vocab"]) <= set(synthetic.COLORS) | set(synthetic.SHAPES) | {"1", "2", "3", "4", "yes", "no", "left", "right", "top", "bottom"}


def test_images_show_each_shape_in_its_cell():
    rng = random.Random(0)
    for _ in range(30):
        scene = synthetic.sample_scene(rng)
        pixels = np.asarray(synthetic.draw_scene(scene, 56, rng)).astype(int)
        for obj in scene:
            rows = slice(0, 28) if obj.cell < 2 else slice(28, 56)
            cols = slice(0, 28) if obj.cell % 2 == 0 else slice(28, 56)
            close = np.abs(pixels[rows, cols] - synthetic.COLORS[obj.color]).sum(-1) < 30
            assert close.sum() > 0.1 * 28 * 28, obj  # the shape covers a good part of its cell
        assert (np.abs(pixels - synthetic.BACKGROUND).sum(-1) < 30).mean() > 0.3


def test_questions_and_captions_describe_the_scene():
    S = synthetic.Shape
    scene = [S("red", "circle", 0), S("orange", "circle", 1), S("red", "square", 3)]
    assert synthetic.caption(scene) == "a red circle, an orange circle and a red square"
    rng = random.Random(0)
    qas = {qa.qtype: qa for _ in range(20) for qa in synthetic.sample_questions(scene, 5, rng)}
    assert (qas["color"].question, qas["color"].answer) == ("What color is the square?", "red")
    assert (qas["shape"].question, qas["shape"].answer) == ("What shape is the orange object?", "circle")
    assert (qas["count"].answer, qas["count"].full_answer) == ("3", "There are 3 shapes.")
    for _ in range(50):
        qa = synthetic._question("position", scene, rng)
        obj = next(o for o in scene if o.name in qa.question)
        expected = ("left" if obj.cell % 2 == 0 else "right") if "left" in qa.question else ("top" if obj.cell < 2 else "bottom")
        assert qa.answer == expected
        qa = synthetic._question("exist", scene, rng)
        assert qa.answer == ("yes" if any(f"{o.name}?" in qa.question for o in scene) else "no")


def test_cli_writes_the_dataset(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path), "--num-train", "4", "--num-val", "2", "--image-size", "56"])
    assert "wrote" in capsys.readouterr().out
    stats = load(tmp_path / "stats.json")
    assert stats["num_train_images"] == 4 and stats["num_val_images"] == 2 and stats["image_size"] == 56
    assert {f for f in stats["files"].values()} == {"images", "train.json", "val.json", "stage1.json", "vqav2/questions.json",
                                                   "vqav2/annotations.json", "vqav2/val2014", "gqa/testdev_balanced_questions.json"}
