"""Training at the paper's shapes through the real entry point, `deepspeed --num_gpus 2 scripts/train_vqa.py` (2 gloo
ranks on CPU), with the shipped recipes `stage1_align` + `stage2_instruct` (bf16 weights with DeepSpeed's fp32 master
weights, gradient checkpointing, their learning rates, `pad_to_square`, length grouping), one step per stage.

Shapes: CLIP ViT-L/14-336 (1024 wide, 336 px -> 576 image tokens + CLS) cut to 4 blocks, and a Vicuna-7B-shaped LM
(4096 wide, 32 heads, 11008 MLP, vocabulary 32000) cut to ONE layer; random weights in bfloat16 written with
`save_pretrained` (`vitsplit_vlm.shapes`), the LM with a locally trained tokenizer. The data are LLaVA JSON records
whose conversation fills `model_max_length` = 2048 tokens exactly (576 of them the image's), one per rank and step.

Why one LM layer and not two: with two, ViT-Split's stage 2 trains 849M parameters. On the CPU a rank holds about
12 bytes per trained parameter under ZeRO-2 (the bf16 model whole, its half of the fp32 master weights, gradients
and AdamW moments, AdamW's temporaries) and not much less under ZeRO-3 with 2 ranks, so the two ranks would need about
22 GiB, more than this 24 GiB machine (and CI) gives them beside the rest; a ZeRO-2 run at two layers passed 21 GiB
and was stopped (stage 1's engine was then still alive beside it, since fixed). At one layer it trains 647M (the
baseline 486M) and peaks at about 9 GiB per rank. Every width is the real one: only the depth is cut, as the
tower's is. The stages train exactly their recipes' `train_parts` (the baseline: its projector, then projector + LM,
as LLaVA-1.5); nothing is frozen to make them fit.

Three launches (the budget of CI allows no more):
* ViT-Split (`clip-l-vlm`: 4096-wide fusion, identity projector): stage 1 under ZeRO-2, stage 2 under ZeRO-3, as the
  shipped configs pair them, stage 2 handed the stage-1 weights and taking 2 steps with a checkpoint after each;
  then `--resume` from checkpoint-1 (checkpoint-2 and the final model removed, as a run stopped after step 1 leaves
  it), which must retake step 2 exactly as the uninterrupted run took it: same loss, same weights.
* LLaVA-1.5 baseline (`llava-baseline`, `mlp2x_gelu` projector): stage 1 under ZeRO-3, stage 2 under ZeRO-2.
Each preset trains both stages, each ZeRO stage runs both stages and both presets; ViT-Split's stage 2 under ZeRO-2
and the baseline's under ZeRO-3 are the pairings not run.
"""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from vitsplit_vlm.config import SHIPPED_CONFIGS
from vitsplit_vlm.conversation import tokenize_conversation
from vitsplit_vlm.data.llava_json import LlavaDataset, record_messages
from vitsplit_vlm.models import VitSplitLlavaProcessor
from vitsplit_vlm.shapes import shape_config, write_checkpoint
from vitsplit_vlm.train.checkpoint import FINAL_DIR, STAGE1_WEIGHTS

pytestmark = pytest.mark.real_shape

SEQ_LEN, IMAGE_TOKENS, RECORDS = 2048, 576, 4
LM, TOWER = "vicuna-7b-v1.5", "clip-vit-large-patch14-336"
LM_LAYERS, TOWER_BLOCKS = 1, 4
WORDS = "the red circle is left of a big blue square and two small green stars are at the top".split()


def _record(i: int, words: int) -> dict:
    return {"id": f"r{i}", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image in detail."},
        {"from": "gpt", "value": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))}]}


def _fill(path: Path, template: str, processor: VitSplitLlavaProcessor, images: Path) -> Path:
    """Records whose conversation is exactly SEQ_LEN tokens with the image expanded, checked through the dataset
    training builds."""
    def length(words: int) -> int:
        messages, _ = record_messages(_record(0, words))
        ids = tokenize_conversation(messages, processor.tokenizer, template, num_image_tokens=IMAGE_TOKENS).input_ids
        return len(ids) + IMAGE_TOKENS - 1

    low, high = 1, SEQ_LEN
    while low < high:  # the most words that fit
        mid = (low + high + 1) // 2
        low, high = (mid, high) if length(mid) <= SEQ_LEN else (low, mid - 1)
    path.write_text(json.dumps([_record(i, low) for i in range(RECORDS)]))
    dataset = LlavaDataset(path, images, processor.tokenizer, processor.preprocess_images, template=template,
                           num_image_tokens=IMAGE_TOKENS, model_max_length=SEQ_LEN)
    for item in (dataset[i] for i in range(RECORDS)):
        assert item["input_ids"].numel() == SEQ_LEN, "pick WORDS so that a conversation fills the sequence exactly"
        assert (item["input_ids"] == processor.image_token_id).sum() == IMAGE_TOKENS
        assert (item["labels"] >= 0).sum() > SEQ_LEN // 2  # the answer is most of it
        assert tuple(item["pixel_values"].shape) == (3, 336, 336)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_shapes")
    lm = write_checkpoint(LM, root / "lm", num_layers=LM_LAYERS)
    tower = write_checkpoint(TOWER, root / "tower", num_layers=TOWER_BLOCKS)
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (500, 400), (120, 30, 200)).save(images / "wide.png")  # not square: pad_to_square pads it
    processor = VitSplitLlavaProcessor.from_components(tower, lm)
    assert processor.num_image_tokens == IMAGE_TOKENS
    data = {template: _fill(root / f"{template}.json", template, processor, images) for template in ("plain", "vicuna_v1")}
    yield {"lm": lm, "tower": tower, "images": images, **data}
    shutil.rmtree(root)  # 1.4 GB of weights


@pytest.fixture
def out(tmp_path):
    yield tmp_path / "run"
    shutil.rmtree(tmp_path)  # checkpoints of ~10 GB: pytest keeps the last runs' tmp dirs otherwise


def _config(out: Path, shapes: dict, preset: str, zero1: str, zero2: str, stage2_steps: int = 1) -> Path:
    """The shipped recipes at batch 1 per rank on the real-shape components and data: one step in stage 1,
    `stage2_steps` in stage 2 (more than one: a checkpoint after every step, all kept)."""
    shipped = {name: yaml.safe_load((SHIPPED_CONFIGS / f"{name}.yaml").read_text()) for name in ("stage1_align", "stage2_instruct")}
    model = shipped["stage2_instruct"]["model"]
    parts = {}
    if preset == "llava-baseline":  # LLaVA-1.5's own recipe: no heads to train
        model = {**model, "split": preset, "split_options": {}, "projector_type": "mlp2x_gelu"}
        parts = {"stage1": ["projector"], "stage2": ["projector", "language_model"]}
    one_step = dict(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1, logging_steps=1,
                    warmup_steps=0,  # a warmup over one step would make its learning rate 0
                    dataloader_num_workers=0, trainer_args={})  # the recipes' tf32 is for Ampere GPUs
    stage1 = shipped["stage1_align"]["stage1"]
    stage2 = shipped["stage2_instruct"]["stage2"]
    config = {
        "output_dir": str(out), "seed": 0,
        "model": {**model, "vision_tower": str(shapes["tower"]), "language_model": str(shapes["lm"])},
        "stage1": {**stage1, **one_step, "deepspeed": zero1, "save_steps": 0, "train_parts": parts.get("stage1", stage1["train_parts"]),
                   "data": {**stage1["data"], "train_json": str(shapes["plain"]), "image_folder": str(shapes["images"])}},
        "stage2": {**stage2, **one_step, "deepspeed": zero2, "max_steps": stage2_steps, "save_steps": int(stage2_steps > 1),
                   "save_total_limit": None, "train_parts": parts.get("stage2", stage2["train_parts"]),
                   "data": {**stage2["data"], "train_json": str(shapes["vicuna_v1"]), "image_folder": str(shapes["images"])}},
    }
    path = out.parent / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(run_command, launcher: Path, port: int, config: Path, *args: str) -> None:
    run_command([str(launcher), "--num_gpus", "2", "--master_port", str(port), "scripts/train_vqa.py",
                 "--config", str(config), *args], threads=1, timeout=1500)


def _steps(log: str, stage: str) -> dict[int, dict]:
    """The Trainer's per-step log entries of `stage` (the end-of-training summary left out)."""
    entries = [(int(step), json.loads(entry)) for step, entry in re.findall(rf"\[{stage}\] step (\d+): (\{{.*\}})", log)]
    return {step: entry for step, entry in entries if "loss" in entry}


def _peaks(log: str, stage: str) -> list[float]:
    """Peak host RSS (GiB) of each rank in `stage`, as the stage logs it."""
    [line] = re.findall(rf"{stage} peak memory per rank: host RSS ([\d., ]+) GiB\n", log)
    return [float(v) for v in line.split(", ")]


def _check_zero3_stage_memory(log: str, stage: str, rows: dict[str, tuple[int, int]]) -> list[float]:
    """Under ZeRO-3 each rank's whole peak (interpreter, activations and temporaries included) stays below the
    stage's training state as one unpartitioned rank would hold it: 16 bytes per trained parameter (bf16 weight and
    gradient, fp32 master weight and two AdamW moments) and 2 per frozen one. A rank that held everything, or still
    held the previous stage's engine, would not."""
    trainable = sum(t for t, _ in rows.values())
    frozen = sum(n for _, n in rows.values()) - trainable
    whole = (16 * trainable + 2 * frozen) / 2**30
    peaks = _peaks(log, stage)
    assert len(peaks) == 2 and max(peaks) < whole, (stage, peaks, whole)
    return peaks


def _report(capsys, name: str, log: str) -> None:
    """The figures each stage logged, on the console (`pytest -s`): peak host RSS per rank and the Trainer's runtime."""
    with capsys.disabled():
        for stage in ("stage1", "stage2"):
            if f"{stage} peak memory per rank" in log:
                runtime = re.findall(rf"\[{stage}\] step \d+: .*\"train_runtime\": ([\d.]+)", log)
                print(f"\n{name} {stage}: peak host RSS per rank {_peaks(log, stage)} GiB, train_runtime {runtime} s")


def _lm_params() -> int:
    """The cut Vicuna-7B's parameters from its config: embeddings and head, attention, gated MLP, two RMSNorms per
    layer and the final one."""
    c = shape_config(LM, LM_LAYERS)
    layer = 4 * c.hidden_size**2 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return 2 * c.vocab_size * c.hidden_size + c.num_hidden_layers * layer + c.hidden_size


def _clip_block_params() -> int:
    """One CLIP-L block, what the task head copies: q/k/v/o and the MLP with biases, two LayerNorms."""
    c = shape_config(TOWER)
    h, i = c.hidden_size, c.intermediate_size
    return 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h


def _check_stage(log: str, out: Path, stage: str, zero: str, data: Path, trained: dict[str, int | None]) -> dict:
    """Ran on 2 ranks under `zero` on the 2048-token data, trained exactly `trained` (part -> parameters, None: any
    number > 0), other parts frozen, and took a step with a finite loss. Returns the step's log entry and the
    parameter table (part -> trainable, total)."""
    assert f"{stage}: 2 process(es), DeepSpeed {SHIPPED_CONFIGS / 'deepspeed' / zero}.json" in log
    assert (f"{stage} data {data}: {RECORDS} records, {RECORDS} used, 0 skipped (bad), 0 truncated to "
            f"model_max_length={SEQ_LEN}") in log
    [table] = re.findall(rf"{stage} trainable parameters:\n(.*?)\nall ", log, re.S)
    rows = {part: (int(t.replace(",", "")), int(n.replace(",", ""))) for part, t, n in re.findall(r"^(\w+) +([\d,]+) +([\d,]+)$", table, re.M)}
    assert rows["tower"][0] == 0
    for part, (trainable, total) in rows.items():
        if part in trained:
            assert trainable == total > 0 and trained[part] in (None, total), (part, rows[part])
        else:
            assert trainable == 0, (part, rows[part])
    step = _steps(log, stage)[1]
    assert math.isfinite(step["loss"]) and step["loss"] > 0 and math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0
    return step, rows


def _learning_rates(config: Path) -> tuple[float, float]:
    recipe = yaml.safe_load(config.read_text())
    return float(recipe["stage1"]["learning_rate"]), float(recipe["stage2"]["learning_rate"])  # YAML reads 5e-4 as text


def _tensors(directory: Path, keys) -> dict[str, torch.Tensor]:
    """`keys` from a safetensors file or a sharded checkpoint's files."""
    index = directory / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else dict.fromkeys(keys, "model.safetensors")
    out = {}
    for key in keys:
        with safe_open(str(directory / files[key]), framework="pt") as f:
            out[key] = f.get_tensor(key)
    return out


def _assert_within_one_step(after: dict, before: dict, lr: float) -> None:
    """`after` is `before` moved by at most one AdamW step of `lr` (its first steps move each weight by at most lr),
    rounded to bfloat16 (half a unit in the last place: 2^-8 of the value)."""
    for key, value in before.items():
        torch.testing.assert_close(after[key].float(), value.float(), rtol=2**-8, atol=lr * 1.01, msg=key)


def _check_hand_off(out: Path, lr1: float, lr2: float, stage1_step: dict, after_one_step: Path) -> dict:
    """Stage 2 started from the stage-1 file: its weights after one step (`after_one_step`: its final model or
    checkpoint-1) are within one stage-2 step of it. Stage 1 moved them by about lr1 (its step had that learning
    rate and a gradient), far more than lr2, so a stage 2 that had started from fresh weights would fail."""
    assert stage1_step["learning_rate"] == pytest.approx(lr1) and lr1 > 10 * lr2
    with safe_open(str(out / "stage1" / STAGE1_WEIGHTS), framework="pt") as f:
        handed = {key: f.get_tensor(key) for key in f.keys()}
    _assert_within_one_step(_tensors(after_one_step, handed), handed, lr2)
    return handed


def test_vit_split_stage1_zero2_stage2_zero3_and_resume(shapes, out, free_port, run_command, deepspeed_launcher, capsys):
    config = _config(out, shapes, "clip-l-vlm", "zero2", "zero3", stage2_steps=2)
    _launch(run_command, deepspeed_launcher, free_port, config)
    log = (out / "train.log").read_text()
    lm = _lm_params()
    stage1, _ = _check_stage(log, out, "stage1", "zero2", shapes["plain"], {"prior_head": None})
    _, rows = _check_stage(log, out, "stage2", "zero3", shapes["vicuna_v1"],
                           {"task_head": _clip_block_params(), "prior_head": None, "language_model": lm})
    _check_zero3_stage_memory(log, "stage2", rows)
    lr1, lr2 = _learning_rates(config)
    stage2 = out / "stage2"
    handed = _check_hand_off(out, lr1, lr2, stage1, stage2 / "checkpoint-1")
    assert any(k.startswith("vision.prior_head.") for k in handed) and any(k.startswith("vision.fusion.") for k in handed)
    steps = _steps(log, "stage2")
    assert list(steps) == [1, 2] and math.isfinite(steps[2]["loss"])
    _report(capsys, "ViT-Split", log)

    # A run stopped after stage 2's checkpoint-1: resume retakes step 2 from it, under ZeRO-3 again, and must give
    # what the uninterrupted run gave (same batch, restored weights, optimizer moments and schedule).
    keys = [*handed, "language_model.lm_head.weight", "language_model.model.layers.0.mlp.down_proj.weight"]
    uninterrupted = _tensors(stage2 / FINAL_DIR, keys)
    shutil.rmtree(stage2 / FINAL_DIR)
    shutil.rmtree(stage2 / "checkpoint-2")
    _launch(run_command, deepspeed_launcher, free_port, config, "--resume")
    resumed = (out / "train.log").read_text()[len(log):]
    assert f"stage1: already complete in {out / 'stage1'}, skipped (resume)" in resumed
    assert f"stage2: resuming from {stage2 / 'checkpoint-1'}" in resumed
    again = _steps(resumed, "stage2")
    assert list(again) == [2]  # step 1 is not taken again
    assert again[2]["learning_rate"] == steps[2]["learning_rate"] and again[2]["epoch"] == steps[2]["epoch"]
    assert again[2]["loss"] == pytest.approx(steps[2]["loss"], rel=1e-5, abs=0)
    after = _tensors(stage2 / FINAL_DIR, keys)
    for key in keys:
        torch.testing.assert_close(after[key], uninterrupted[key], rtol=0, atol=0, msg=key)
    _report(capsys, "ViT-Split, resumed", resumed)


def test_llava_baseline_stage1_zero3_stage2_zero2(shapes, out, free_port, run_command, deepspeed_launcher, capsys):
    config = _config(out, shapes, "llava-baseline", "zero3", "zero2")
    _launch(run_command, deepspeed_launcher, free_port, config)
    log = (out / "train.log").read_text()
    mlp = 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # mlp2x_gelu: CLIP-L width -> LM width -> LM width
    stage1, _ = _check_stage(log, out, "stage1", "zero3", shapes["plain"], {"projector": mlp})
    _check_stage(log, out, "stage2", "zero2", shapes["vicuna_v1"], {"projector": mlp, "language_model": _lm_params()})
    handed = _check_hand_off(out, *_learning_rates(config), stage1, out / "stage2" / FINAL_DIR)
    assert handed and all(k.startswith("projector.") for k in handed)
    _report(capsys, "baseline", log)
