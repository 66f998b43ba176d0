"""Stage configs: the shipped YAMLs parse and pass the checks, bad combinations fail with clear messages, the
DeepSpeed JSONs are accepted by the Trainer's and DeepSpeed's own config parsers."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from vitsplit_vlm.config import load_config
from vitsplit_vlm.train.config import ConfigError, RunConfig, check_train_config, stages
from vitsplit_vlm.train.model_setup import learning_rates
from vitsplit_vlm.train.run import parse_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def _elsewhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # shipped configs name their DeepSpeed JSON by name, valid from any directory


def _load(name: str, *overrides: str) -> RunConfig:
    return load_config(RunConfig, CONFIGS / name, list(overrides))


def test_demo_config_trains_both_stages_and_evaluates():
    config = _load("demo.yaml")
    check_train_config(config)
    assert [name for name, _ in stages(config)] == ["stage1", "stage2"]
    assert config.stage1.train_parts == ["projector", "prior_head"] and config.stage1.data.template == "plain"
    assert set(config.stage2.train_parts) == {"task_head", "prior_head", "projector", "language_model"}
    assert config.eval is not None and config.model.vision_tower is None  # tiny checkpoints, synthetic data


def test_overrides_may_come_before_and_after_the_options():
    args = parse_args(["output_dir=out", "--config", "easy_vqa", "stage2.max_steps=2", "--resume"])
    assert args.config.name == "easy_vqa.yaml" and args.resume
    assert args.overrides == ["output_dir=out", "stage2.max_steps=2"]


def test_easy_vqa_config_is_a_curriculum_on_the_converted_set_and_scores_its_test_split():
    config = _load("easy_vqa.yaml")
    with pytest.raises(ConfigError, match=r"^stage1\.data\.train_json: no such data file data/easy_vqa/train_open\.json\.$"):
        check_train_config(config)  # before `python -m vitsplit_vlm.data.easy_vqa --out data/easy_vqa`
    Path("data/easy_vqa/images").mkdir(parents=True)
    for name in ("train", "train_open"):
        Path(f"data/easy_vqa/{name}.json").write_text("[]")
    check_train_config(config)
    assert [name for name, _ in stages(config)] == ["stage1", "stage2"] and not config.stage2.require_init
    everything = ["task_head", "prior_head", "projector", "language_model"]
    assert config.stage1.train_parts == config.stage2.train_parts == everything  # stage 2 continues from stage 1's model
    assert (config.stage1.data.train_json, config.stage2.data.train_json, config.eval.val_json) == (
        "data/easy_vqa/train_open.json", "data/easy_vqa/train.json", "data/easy_vqa/val.json")
    assert config.stage1.data.image_folder == config.stage2.data.image_folder == config.eval.image_folder == "data/easy_vqa/images"
    assert config.model.vision_tower is None and config.model.tiny_size == "demo"


def test_recipe_configs_match_the_paper(tmp_path):
    with pytest.raises(ConfigError, match=r"^stage1\.data\.train_json: no such data file data/LLaVA-Pretrain/blip_laion_cc_sbu_558k\.json\.$"):
        check_train_config(_load("stage1_align.yaml"))  # the paper's data is named, not shipped: checked up front
    (tmp_path / "data.json").write_text("[]")
    data = [f"stage1.data.train_json={tmp_path / 'data.json'}", f"stage1.data.image_folder={tmp_path}"]
    stage1 = _load("stage1_align.yaml", *data)
    check_train_config(stage1)
    stage1_file = tmp_path / "stage1.safetensors"  # init_from's header is read at check time
    save_file({"projector.0.weight": torch.zeros(1)}, str(stage1_file))
    assert (stage1.stage1.learning_rate, stage1.stage1.per_device_train_batch_size, stage1.stage1.data.template) == (5e-4, 32, "plain")
    assert stage1.stage1.deepspeed.endswith("zero2.json") and stage1.stage1.bf16 and stage1.stage1.gradient_checkpointing
    for name in ("stage2_instruct.yaml", "stage2_lora.yaml"):
        data = [f"stage2.data.train_json={tmp_path / 'data.json'}", f"stage2.data.image_folder={tmp_path}"]
        with pytest.raises(ConfigError, match=r"^stage2 needs stage-1 weights \(require_init: true\): set stage2\.init_from="):
            check_train_config(_load(name, *data))
        check_train_config(_load(name, f"stage2.init_from={stage1_file}", *data))
    full = _load("stage2_instruct.yaml").stage2
    assert (full.learning_rate, full.per_device_train_batch_size * full.gradient_accumulation_steps) == (2e-5, 32)
    assert full.deepspeed.endswith("zero3.json") and full.data.template == "vicuna_v1" and full.group_by_length
    lora = _load("stage2_lora.yaml").stage2
    assert lora.lora.enabled and "language_model" not in lora.train_parts
    assert learning_rates(lora) == {"task_head": 2e-5, "prior_head": 2e-5, "projector": 2e-5, "language_model": 2e-4}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stage1.train_parts=[projector, vision]"], r"^stage1\.train_parts: unknown part\(s\) vision; known parts: task_head, prior_head, projector, language_model\.$"),
        (["stage2.lora.enabled=true"], r"^stage2: lora\.enabled trains the language model through LoRA adapters; remove 'language_model' from train_parts"),
        (["stage1.train_parts=[]"], r"^stage1: nothing to train: train_parts is empty and LoRA is off\.$"),
        (["stage1.data.template=llava"], r"^stage1\.data\.template='llava'; choose one of plain, vicuna_v1, chat_template\.$"),
        (["stage1.deepspeed=configs/deepspeed/zero9.json"], r"demo\.yaml\.stage1\.deepspeed: DeepSpeed config configs/deepspeed/zero9\.json does not exist; give a JSON file or a shipped name \(zero2, zero3, zero3_offload\)\.$"),
        (["stage1.deepspeed=zero9"], r"demo\.yaml\.stage1\.deepspeed: DeepSpeed config zero9 does not exist; give a JSON file"),
        (["stage2.max_steps=-2"], r"demo\.yaml\.stage2\.max_steps: -2: must be > 0, or -1 to train num_train_epochs\.$"),
        (["stage1.learning_rate=0"], r"demo\.yaml\.stage1\.learning_rate: 0\.0: must be > 0\.$"),
        (["stage1.learning_rate=-1e-4"], r"demo\.yaml\.stage1\.learning_rate: -0\.0001: must be > 0\.$"),
        (["stage2.per_device_train_batch_size=0"], r"demo\.yaml\.stage2\.per_device_train_batch_size: 0: must be >= 1\.$"),
        (["stage2.optim=adamw"], r"demo\.yaml\.stage2\.optim: 'adamw': choose one of adamw_torch, adamw_torch_fused, "),
        (["stage2=5"], r"demo\.yaml\.stage2: is a section of options, got 5; set its keys, e\.g\. stage2\.<option>=\.\.\.$"),
        (["stage1.train_parts=projector"], r"demo\.yaml\.stage1\.train_parts: expected a list, e\.g\. \[a, b\], got 'projector'\.$"),
        (["stage2.data.train_json=x.json"], r"^stage2\.data\.image_folder: required with train_json"),
        (["stage1=null", "stage2=null"], r"^the config defines no stage"),
        (["model.dtype=bfloat16", "stage2.deepspeed=null"], r"^model\.dtype=bfloat16 without DeepSpeed would train stage2 in pure bfloat16"),
        (["stage1.lora.enabled=true"], r"^stage1 trains LoRA adapters, which stage2 cannot continue from: train stage1's language model fully "),
        (["synthetic.questions_per_image=0"], r"^synthetic\.questions_per_image=0: must be 1-5 \(one question per type\)\.$"),
    ],
)
def test_bad_configs_fail_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(_load("demo.yaml", *overrides))


def test_task_head_lr_multiplier_and_projector_lr():
    config = _load("demo.yaml", "stage2.learning_rate=1e-3", "stage2.projector_lr=1.0e-2", "stage2.task_head_lr_mult=0.1")
    assert learning_rates(config.stage2) == pytest.approx(
        {"task_head": 1e-3, "prior_head": 1e-2, "projector": 1e-2, "language_model": 1e-3}
    )


@pytest.mark.parametrize("name, stage, offload", [("zero2.json", 2, False), ("zero3.json", 3, False), ("zero3_offload.json", 3, True)])
def test_deepspeed_jsons_load(name, stage, offload):
    """The Trainer fills every "auto" from its arguments; DeepSpeed's own (pydantic) parser accepts the result."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", deepspeed=str(CONFIGS / "deepspeed" / name), use_cpu=True,
                             per_device_train_batch_size=4, report_to=[])
    ds = args.hf_deepspeed_config
    ds.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))  # sizes the "auto" ZeRO buckets
    ds.trainer_config_finalize(args, model=model, num_training_steps=10)
    config = ds.config
    assert "auto" not in json.dumps(config)
    assert "optimizer" not in config  # the client torch AdamW: no JIT-built DeepSpeed optimizer
    assert config["zero_allow_untested_optimizer"] is True
    zero = DeepSpeedZeroConfig(**config["zero_optimization"])
    assert zero.stage == stage and (zero.offload_optimizer is not None) == offload
    if stage == 3:
        assert zero.gather_16bit_weights_on_model_save  # the final model is written whole, in HF format
    if offload:
        assert config["zero_force_ds_cpu_optimizer"] is False
