"""The model card of a LoRA stage, and the evaluation filled in after the final save (full runs: test_train_cli)."""
import json
from pathlib import Path

import yaml

from vitsplit_vlm.config import load_config
from vitsplit_vlm.train.config import RunConfig
from vitsplit_vlm.train.model_card import NO_EVAL, add_evaluation, write_model_card
from vitsplit_vlm.train.model_setup import Components
from vitsplit_vlm.train.stage import StageData


def _parse(final: Path) -> tuple[dict, str]:
    _, header, body = (final / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_lora_card_then_evaluation(tmp_path):
    final = tmp_path / "run" / "stage2" / "final"
    base = final.parent / "base_model"
    final.mkdir(parents=True)
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"split": {"task_layers": 1, "prior_layers": [-2]}}))
    config = load_config(RunConfig, "stage2_lora", [f"output_dir={tmp_path / 'run'}", "stage2.init_from=run1/stage1"])
    data = StageData([Path("llava_v1_5_mix665k.json")], Path("data"))
    write_model_card(final, config, Components(Path("ckpt/clip"), Path("ckpt/vicuna")), [("stage2", config.stage2, data)],
                     "part   trainable   total\nall    1   2")
    meta, body = _parse(final)
    assert meta["base_model"] == ["ckpt/clip", "ckpt/vicuna"] and {"lora", "peft", "vit-split"} <= set(meta["tags"])
    assert "model-index" not in meta and NO_EVAL in body
    assert ("| stage2 | task_head, prior_head, projector + LoRA (r=128) (from `run1/stage1`) | `vicuna_v1` | "
            "`llava_v1_5_mix665k.json` | `data` | 1 epochs | task_head 2e-05, prior_head 2e-05, projector 2e-05, "
            "language_model 2e-04 | zero3 |") in body
    assert '`{"prior_layers": [-2], "task_layers": 1}`' in body and "```text\npart   trainable   total\nall    1   2\n```" in body
    assert f"vitsplit-merge-lora --model {base} --adapter {final} --out merged" in body

    for accuracy in (12.345, 61.0):  # a second evaluation replaces the first
        add_evaluation(final, {"accuracy": accuracy, "num_questions": 3, "val_json": "val.json", "chance_accuracy": 20.0,
                               "per_question_type": {"other": {"accuracy": 50.0, "num_questions": 2,
                                                               "majority_answer": "red", "baseline": 25.0}}})
    meta, body = _parse(final)
    [result] = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "stage2"
    assert result["metrics"] == [{"type": "accuracy", "value": 61.0}] and result["dataset"]["name"] == "val.json"
    assert body.count("## Evaluation") == 1 and NO_EVAL not in body and "12.3" not in body
    assert "questions of `val.json`, exact match after the official VQA normalisation: **61.0%** (always answering the " \
           "majority answer of the question's type: 20.0%)." in body and "| other | 2 | 50.0% | red | 25.0% |" in body
    assert body.index("## Evaluation") < body.index("## How to load")
