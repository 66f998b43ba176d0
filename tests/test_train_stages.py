"""Stages run in-process on the HF Trainer under DeepSpeed ZeRO-2 (one gloo rank): which parts train, the stage-1 ->
stage-2 hand-off, resume equivalence, LoRA train -> merge, and that a finished stage leaves no model behind."""
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from vitsplit_vlm.data.synthetic import generate
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.train.checkpoint import BASE_DIR, FINAL_DIR, STAGE1_WEIGHTS
from vitsplit_vlm.train.config import DataConfig, LoraConfig, ModelConfig, StageConfig
from vitsplit_vlm.train.model_setup import Components

DEEPSPEED = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
ZERO2 = str(DEEPSPEED / "zero2.json")
pytestmark = pytest.mark.usefixtures("gloo_rank")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=4, image_size=28)


@pytest.fixture(scope="module")
def components(tiny_ckpts):
    return Components(tiny_ckpts["clip"], tiny_ckpts["llama"])


def _stage(**overrides) -> StageConfig:
    options = dict(max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                   save_steps=1000, deepspeed=ZERO2)
    return StageConfig(**{**options, **overrides})


def _run(name, stage, components, data, out, data_file="train", init_from=None, callbacks=()):
    from vitsplit_vlm.train.stage import StageData, run_stage

    return run_stage(name, stage, ModelConfig(), components, StageData([data[data_file]], data["images"]), out,
                     seed=0, init_from=init_from, callbacks=callbacks)


def _losses(result):
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def test_stages_train_their_parts_and_hand_off(components, data, tmp_path, tiny_ckpts):
    stage1 = _stage(train_parts=["projector", "prior_head"], data=DataConfig(template="plain"))
    result1 = _run("stage1", stage1, components, data, tmp_path / "stage1", data_file="stage1")
    handed = load_file(result1.stage1_weights)
    assert {k.split(".")[0] if k.startswith("projector") else ".".join(k.split(".")[:2]) for k in handed} == {
        "projector", "vision.prior_head", "vision.fusion"}
    assert (tmp_path / "stage1" / "loss_curve.png").stat().st_size > 0

    stage2 = _stage(train_parts=["task_head", "language_model"], require_init=True)
    result2 = _run("stage2", stage2, components, data, tmp_path / "stage2", init_from=tmp_path / "stage1")
    final = VitSplitLlavaForConditionalGeneration.from_pretrained(result2.final_dir)
    start = VitSplitLlavaForConditionalGeneration.from_components(
        tiny_ckpts["clip"], tiny_ckpts["llama"], final.config.split_config)
    state, initial = final.state_dict(), start.state_dict()
    changed = {k for k in state if not torch.equal(state[k], initial[k])}
    for key in handed:  # frozen in stage 2: exactly the stage-1 values
        torch.testing.assert_close(state[key], handed[key], rtol=0, atol=0, msg=key)
    assert not any(k.startswith("vision.tower.") for k in changed)  # the tower never trains
    assert any(k.startswith("vision.task_blocks.") for k in changed)
    assert any(k.startswith("language_model.") for k in changed)
    assert (result2.final_dir / "processor_config.json").is_file()  # loadable with its processor


@pytest.mark.parametrize("zero", ["zero2.json", "zero3.json"])
def test_a_stage_after_full_fine_tuning_continues_from_its_whole_model(components, data, tmp_path, zero):
    """A curriculum: one stage trains everything on some records, the next continues on others from its final/."""
    from vitsplit_vlm.train.model_setup import build_stage_model

    stage = _stage(train_parts=["task_head", "prior_head", "projector", "language_model"], deepspeed=str(DEEPSPEED / zero))
    first = _run("stage1", stage, components, data, tmp_path / "stage1")
    trained = VitSplitLlavaForConditionalGeneration.from_pretrained(first.final_dir).state_dict()
    start = build_stage_model(ModelConfig(), components, replace(stage, train_parts=["projector"]), first.final_dir)
    assert start.state_dict().keys() == trained.keys()
    for key, value in start.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    assert {n.split(".")[0] for n, p in start.named_parameters() if p.requires_grad} == {"projector"}
    second = _run("stage2", stage, components, data, tmp_path / "stage2", init_from=first.final_dir)
    assert _losses(second)[0] < _losses(first)[0]  # it starts where the first stage left off, not from scratch


class _StopAt(TrainerCallback):
    """Stops after `step` (its checkpoint is written first) and counts the steps this run really took."""

    def __init__(self, step: int | None = None):
        self.step, self.steps_run = step, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_continues_the_same_loss_curve(components, data, tmp_path):
    stage = _stage(train_parts=["projector", "prior_head", "language_model"], max_steps=6, save_steps=3,
                   learning_rate=3e-3)
    full = _losses(_run("stage2", stage, components, data, tmp_path / "full"))
    interrupted = _losses(_run("stage2", stage, components, data, tmp_path / "cut", callbacks=[_StopAt(3)]))
    assert len(full) == 6 and len(interrupted) == 3 and (tmp_path / "cut" / "checkpoint-3").is_dir()
    counter = _StopAt()
    resumed = _losses(_run("stage2", replace(stage, resume=True), components, data, tmp_path / "cut", callbacks=[counter]))
    assert counter.steps_run == 3  # steps 4-6 only: it continued from checkpoint-3 (same batches, same optimizer)
    assert resumed == pytest.approx(full, abs=1e-6, rel=0)
    assert full[-1] < full[0]  # it does learn


def test_lora_train_merge_matches_the_peft_model(components, data, tmp_path):
    from peft import PeftModel

    from vitsplit_vlm.train.lora import merge_lora_dirs

    stage = _stage(train_parts=["projector"], lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    result = _run("stage2", stage, components, data, tmp_path)
    adapter = load_file(result.final_dir / "adapter_model.safetensors")
    lora_keys = [k for k in adapter if "lora_" in k]
    assert lora_keys and all(".language_model." in k for k in lora_keys)  # never the tower or task head q/k/v
    assert any(k.startswith("base_model.model.projector.") for k in adapter)  # fully trained module travels along

    merged_dir = merge_lora_dirs(tmp_path / BASE_DIR, result.final_dir, tmp_path / "merged")
    merged = VitSplitLlavaForConditionalGeneration.from_pretrained(merged_dir).eval()
    base = VitSplitLlavaForConditionalGeneration.from_pretrained(tmp_path / BASE_DIR)
    peft_model = PeftModel.from_pretrained(base, str(result.final_dir)).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.manual_seed(0)
    image_id = merged.config.image_token_id
    ids = torch.tensor([[1, *[image_id] * merged.num_image_tokens, 5, 6, 7, 8]])
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = peft_model(input_ids=ids, pixel_values=pixels).logits
        got = merged(input_ids=ids, pixel_values=pixels).logits
        untrained = VitSplitLlavaForConditionalGeneration.from_pretrained(tmp_path / BASE_DIR)(
            input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - untrained).abs().max() > 1e-3  # the adapter did change the model
    assert (merged_dir / "processor_config.json").is_file()
    assert not (tmp_path / FINAL_DIR / STAGE1_WEIGHTS).exists()


def test_tower_whose_processor_size_differs_from_its_config_trains(tiny_ckpts, data, tmp_path):
    """facebook/dinov2-*: config image_size 518, processor crop 224. The dataset must expand <image> to the tokens
    of the images the processor makes, not of the config's native size."""
    import json
    import shutil

    tower = tmp_path / "dinov2_other_crop"
    shutil.copytree(tiny_ckpts["dinov2"], tower)
    processor = json.loads((tower / "preprocessor_config.json").read_text())
    side = 2 * processor["crop_size"]["height"]  # the config's image_size stays; DINOv2 interpolates
    processor.update(crop_size={"height": side, "width": side}, size={"shortest_edge": side})
    (tower / "preprocessor_config.json").write_text(json.dumps(processor))
    stage = _stage(train_parts=["projector", "prior_head"], data=DataConfig(template="plain"), max_steps=1)
    result = _run("stage1", stage, Components(tower, tiny_ckpts["llama"]), data, tmp_path / "out", data_file="stage1")
    assert _losses(result) and result.stage1_weights.is_file()


def test_a_crash_while_saving_the_final_model_does_not_mark_the_stage_complete(tmp_path):
    """save_pretrained writes config.json before the weights: a run killed in between must be redone on resume,
    not skipped with a weightless final/."""
    from vitsplit_vlm.train.stage import _save_output, stage_complete

    class _CrashingTrainer:
        def save_model(self, out_dir):
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "config.json").write_text("{}")
            raise KeyboardInterrupt  # killed before the weights were written

    stage = _stage(train_parts=["language_model"])
    with pytest.raises(KeyboardInterrupt):
        _save_output(_CrashingTrainer(), stage, tmp_path / "stage2")
    assert not stage_complete(stage, tmp_path / "stage2")


class _KeepModel(TrainerCallback):
    """Keeps a weak reference to the model the stage trains."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = weakref.ref(model)


@pytest.mark.parametrize("zero", ["zero2.json", "zero3.json"])
def test_a_finished_stage_frees_its_model_and_engine(components, data, tmp_path, zero):
    """Both stages run in one process: stage 1's model, optimizer and DeepSpeed engine must be gone before stage 2
    builds its own (DeepSpeed's hooks, accelerate's references and ZeRO-3's module stack kept them alive)."""
    keep = _KeepModel()
    stage = _stage(max_steps=1, train_parts=["projector", "prior_head"], deepspeed=str(DEEPSPEED / zero))
    _run("stage1", stage, components, data, tmp_path / "stage1", callbacks=[keep])
    assert keep.model() is None
