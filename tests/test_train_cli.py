"""`scripts/train_vqa.py` end to end in subprocesses: plain `python` (1 rank) and `deepspeed --num_gpus 2` (2 gloo
ranks, ZeRO-2 then ZeRO-3), on test-size tiny models, a few steps per stage, then the held-out evaluation."""
import json
import re
import sys
from pathlib import Path

import yaml

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = ROOT / "configs" / "deepspeed"


def _config(out: Path, stage2_zero: str) -> Path:
    stage = dict(max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_steps=2)
    config = {
        "output_dir": str(out), "seed": 0, "model": {"tiny_size": "test"},
        "synthetic": {"num_train": 16, "num_val": 4, "image_size": 28},
        "stage1": {**stage, "train_parts": ["projector", "prior_head"], "deepspeed": str(DEEPSPEED / "zero2.json"),
                   "data": {"synthetic_file": "stage1.json", "template": "plain"}},
        "stage2": {**stage, "train_parts": ["task_head", "prior_head", "projector", "language_model"],
                   "require_init": True, "deepspeed": str(DEEPSPEED / stage2_zero),
                   "data": {"synthetic_file": ["train.json", "stage1.json"]}},  # two files, one mixed set
        "eval": {"max_new_tokens": 3, "batch_size": 4, "limit": 6},
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _check_outputs(out: Path) -> str:
    log = (out / "train.log").read_text()
    for stage in ("stage1", "stage2"):
        assert f"{stage} trainable parameters:\npart" in log  # the table, printed at the start of each stage
        assert f"[{stage}] step 3: " in log  # per-step losses in the log file
        assert re.search(rf"{stage} peak memory per rank: host RSS \d+\.\d\d(, \d+\.\d\d)* GiB\n", log)
        assert (out / stage / "loss_curve.png").stat().st_size > 1000
        assert list((out / stage / "runs").rglob("events.out.tfevents.*"))  # TensorBoard
    assert "stage2.json" not in log and "/stage1.json: 33 records, 33 used, 0 skipped (bad), 0 truncated" in log
    assert "0 skipped (bad), 0 truncated to model_max_length=2048" in log
    assert (out / "stage1" / "non_lm_trainables.safetensors").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["num_questions"] == 6 and 0 <= summary["accuracy"] <= 100 and "chance_accuracy" in summary
    _check_model_card(out / "stage2" / "final", summary)
    return log


def _check_model_card(final: Path, summary: dict) -> None:
    """README.md: the Hugging Face metadata header, the stages and their data, the parameter table, the evaluation,
    and a loading snippet that works."""
    text = (final / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    out = final.parents[1]
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["library_name"] == "transformers"
    assert meta["base_model"] == [str(out / "tiny" / "clip"), str(out / "tiny" / "llama")]
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == str(out / "data" / "val.json")
    assert result["metrics"] == [{"type": "accuracy", "value": round(summary["accuracy"], 2)}]
    assert f"on 6 held-out questions of `{out / 'data' / 'val.json'}`" in body and "No evaluation ran" not in body
    assert re.search(rf"^\| stage1 \| projector, prior_head \| `plain` \| `{out}/data/stage1\.json` \|", body, re.M)
    assert re.search(rf"^\| stage2 \| task_head, .* \| `{out}/data/train\.json`<br>`{out}/data/stage1\.json` \| .* \| 3 steps \|", body, re.M)
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(final)
    assert json.dumps(model.config.split, sort_keys=True) in body
    for row in model.trainable_parameter_table():  # stage 2 trains all but the tower
        trained = 0 if row.part == "tower" else row.total
        assert re.search(rf"^{row.part} +{trained:,} +{row.total:,}$", body, re.M), row
    [snippet] = re.findall(r"```python\n(.*?)```", body, re.S)
    scope: dict = {}
    exec(snippet, scope)  # the card's own loading code
    assert scope["model"].config.to_dict() == model.config.to_dict() and scope["processor"].num_image_tokens > 0


def test_python_runs_both_stages_and_evaluates(tmp_path, run_command):
    out = tmp_path / "run"
    result = run_command([sys.executable, "scripts/train_vqa.py", "--config", str(_config(out, "zero2.json"))], threads=2)
    log = _check_outputs(out)
    assert "stage2: 1 process(es), DeepSpeed" in log
    assert "held-out accuracy" in result.stderr + result.stdout
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(out / "stage2" / "final")
    assert model.config.projector_type == "mlp2x_gelu"


def test_deepspeed_two_ranks_zero2_then_zero3(tmp_path, free_port, run_command, deepspeed_launcher):
    out = tmp_path / "run"
    run_command([str(deepspeed_launcher), "--num_gpus", "2", "--master_port", str(free_port), "scripts/train_vqa.py", "--config", str(_config(out, "zero3.json"))], threads=1)
    log = _check_outputs(out)
    assert "stage1: 2 process(es), DeepSpeed" in log and "stage2: 2 process(es), DeepSpeed" in log
    # ZeRO-3 partitions parameters across the ranks; the saved model must be gathered whole.
    final = VitSplitLlavaForConditionalGeneration.from_pretrained(out / "stage2" / "final")
    assert all(p.numel() > 0 for p in final.parameters())
