import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vitsplit_vlm.data import easy_vqa
from vitsplit_vlm.data.llava_json import load_llava_json, scan_records
from vitsplit_vlm.data.synthetic import SHORT_ANSWER_PROMPT

ROOT = Path(__file__).resolve().parents[1]


def fake_package_data(root):
    """The layout of easy-vqa 1.0's easy_vqa/data, with 3 train images and 1 test image."""
    questions = {
        "train": [["what is the blue shape?", "rectangle", 0], ["what color is the shape?", "blue", 0],
                  ["is there a red shape?", "no", 2], ["does the image contain a circle?", "yes", 1]],
        "test": [["what shape is present?", "circle", 0], ["is there a gray shape?", "yes", 0]],
    }
    for split, qs in questions.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "questions.json").write_text(json.dumps(qs))
        for image_id in {q[2] for q in qs}:
            Image.new("RGB", (64, 64), (image_id * 40, 0, 0)).save(root / split / "images" / f"{image_id}.png")
    (root / "answers.txt").write_text("circle\nrectangle\nyes\nno\n")
    return root


def q(text):
    return f"<image>\n{text}\n{SHORT_ANSWER_PROMPT}"


def test_converts_to_llava_json_one_question_per_record(tmp_path):
    data = fake_package_data(tmp_path / "easy_vqa" / "data")
    paths = easy_vqa.convert(tmp_path / "out", data)
    train = json.loads(paths["train"].read_text())
    # Image 0's two questions stay apart: in one conversation the first would give the second's answer ("blue") away.
    assert train == [
        {"id": "train_0", "image": "train/0.png", "question_type": "shape", "conversations": [
            {"from": "human", "value": q("what is the blue shape?")}, {"from": "gpt", "value": "rectangle"}]},
        {"id": "train_1", "image": "train/0.png", "question_type": "color", "conversations": [
            {"from": "human", "value": q("what color is the shape?")}, {"from": "gpt", "value": "blue"}]},
        {"id": "train_2", "image": "train/2.png", "question_type": "yes/no", "conversations": [
            {"from": "human", "value": q("is there a red shape?")}, {"from": "gpt", "value": "no"}]},
        {"id": "train_3", "image": "train/1.png", "question_type": "yes/no", "conversations": [
            {"from": "human", "value": q("does the image contain a circle?")}, {"from": "gpt", "value": "yes"}]},
    ]
    assert json.loads(paths["train_open"].read_text()) == train[:2]  # the shape and colour questions
    val = json.loads(paths["val"].read_text())
    assert [(r["id"], r["image"], r["conversations"][1]["value"], r["question_type"]) for r in val] == [
        ("test_0", "test/0.png", "circle", "shape"), ("test_1", "test/0.png", "yes", "yes/no")]
    assert (paths["images"] / "train" / "2.png").read_bytes() == (data / "train" / "images" / "2.png").read_bytes()
    for name in ("train", "train_open", "val"):
        assert scan_records(load_llava_json(paths[name], cache_dir=tmp_path / "hf"), paths["images"]).bad == []


def test_wrong_data_dir_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/questions\.json not found: --data-dir must be easy-vqa's data folder"):
        easy_vqa.convert(tmp_path / "out", tmp_path)


def test_readme_commands_convert_then_train_and_score_the_test_split_by_question_type(tmp_path):
    """The README's two commands from a working directory: convert into data/easy_vqa, then train with the shipped
    easy_vqa config (cut to test-size models and 2 steps) and score the test split per question type."""
    data = fake_package_data(tmp_path / "pkg" / "easy_vqa" / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    for cmd in ([sys.executable, "-m", "vitsplit_vlm.data.easy_vqa", "--out", "data/easy_vqa", "--data-dir", str(data)],
                [sys.executable, str(ROOT / "scripts" / "train_vqa.py"), "--config", "easy_vqa", "model.tiny_size=test", "model.split_options.task_layers=3",
                 "stage1.max_steps=2", "stage1.per_device_train_batch_size=2", "stage2.max_steps=2", "stage2.per_device_train_batch_size=2"]):
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    log = (tmp_path / "outputs" / "easy_vqa" / "train.log").read_text()
    assert "stage1 data data/easy_vqa/train_open.json: 2 records, 2 used" in log  # the fake split's two open questions
    assert "starting from the whole model in outputs/easy_vqa/stage1/final" in log  # the curriculum's hand-off
    # One shape and one yes/no question in the fake test split: each type's majority answer is its only answer.
    assert "on 2 questions (data/easy_vqa/val.json); baseline (majority answer per question type) 100.0%" in log
    assert "(baseline 100.0%: 'circle'; 1 questions)" in log and "(baseline 100.0%: 'yes'; 1 questions)" in log
    summary = json.loads((tmp_path / "outputs" / "easy_vqa" / "eval" / "summary.json").read_text())
    assert sorted(summary["per_question_type"]) == ["shape", "yes/no"]
