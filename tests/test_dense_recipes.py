"""The paper's dense recipes: each builds at its real DINOv2 shape (on the meta device) with the paper's trainable
parameter count, and the depth recipes' one-cycle schedule follows mmcv's OneCycleLrUpdaterHook."""
import math

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from vitsplit_vlm.config import load_config, resolve_config
from vitsplit_vlm.dense import DenseModelConfig, DenseSplitModel
from vitsplit_vlm.dense.train import DenseRunConfig, DenseTrainer, training_arguments
from vitsplit_vlm.vision import ViTSplit, ViTSplitConfig, resolve_split

# facebook/dinov2-{small,base,large}: hidden size, blocks, heads (patch 14, MLP ratio 4, 518 px position grid)
DINOV2 = {"dinov2-small": (384, 12, 6), "dinov2-base": (768, 12, 12), "dinov2-large": (1024, 24, 16)}


@pytest.mark.parametrize("name, tower, trainable_m", [
    # the official README's counts; NYU ViT-B: its config's 4-block task head (the README's 37.0M is 3 blocks)
    ("dense_ade20k_vits", "dinov2-small", 10.2), ("dense_ade20k_vitb", "dinov2-base", 40.5),
    ("dense_ade20k_vitl", "dinov2-large", 88.6), ("dense_nyu_vits", "dinov2-small", 9.3),
    ("dense_nyu_vitb", "dinov2-base", 44.0), ("dense_nyu_vitl", "dinov2-large", 65.5),
])
def test_recipes_build_at_their_real_shape_with_the_papers_trainable_parameters(name, tower, trainable_m):
    cfg = load_config(DenseRunConfig, name)
    assert f"facebook/{tower}" in resolve_config(name).read_text()  # the tower its comment tells the user to save
    hidden, blocks, heads = DINOV2[tower]
    with torch.device("meta"):
        vit = Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=blocks, num_attention_heads=heads,
                                       intermediate_size=4 * hidden, patch_size=14, image_size=518))
        model = DenseSplitModel(ViTSplit(vit, resolve_split(cfg.model.split, cfg.model.split_options)), cfg.model)
    assert model.split.config.deformable  # the paper's dense backbone
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(trainable / 1e6, 1) == trainable_m


@pytest.mark.parametrize("name, task_layers, prior, batch", [
    ("dense_nyu_vitb", 4, [2, 5, 8, 11], 2), ("dense_nyu_vitl", 3, [6, 11, 17, 23], 4),
])
def test_depth_recipes_follow_the_official_configs(name, task_layers, prior, batch):
    cfg = load_config(DenseRunConfig, name)
    split = resolve_split(cfg.model.split, cfg.model.split_options)
    assert (split.task_layers, split.prior_layers, cfg.train.per_device_train_batch_size) == (task_layers, prior, batch)
    assert (cfg.model.task, cfg.train.learning_rate, cfg.train.max_steps, cfg.train.max_grad_norm) == ("depth", 3e-4, 38400, 35)
    assert (cfg.data.crop_size, cfg.data.eigen_crop, cfg.model.max_depth, cfg.eval.flip) == ([416, 544], True, 10.0, True)
    # mmcv's OneCycle gives every group the one max_lr: the task head's lr_mult had no effect on the reported run
    assert (cfg.train.lr_scheduler_type, cfg.train.warmup_steps, cfg.train.task_head_lr_mult) == ("one_cycle", 0.3, 1.0)


def mmcv_one_cycle(step: int, max_lr: float, total: int, pct_start: float, div: float, final_div: float) -> float:
    """mmcv 1.x OneCycleLrUpdaterHook.get_lr (open-mmlab/mmcv 0087cac, mmcv/runner/hooks/lr_updater.py), two
    phases, cosine annealing, written out from its phase table."""
    base = max_lr / div
    start = 0.0
    for end, start_ratio, end_ratio in ((pct_start * total - 1, 1.0, div), (total - 1.0, div, 1 / final_div)):
        if step <= end:
            progress = (step - start) / (end - start)
            low, high = base * start_ratio, base * end_ratio
            return high + 0.5 * (low - high) * (math.cos(math.pi * progress) + 1)
        start = end
    raise AssertionError("past the last phase")


def test_one_cycle_schedule_is_mmcvs_per_group(tiny_ckpts, tmp_path):
    """The recipe's schedule through the dense Trainer: every step's lr equals mmcv's formula, and a task head at
    lr_mult 0.1 follows the same curve at a tenth of it."""
    total = 200
    cfg = load_config(DenseRunConfig, "dense_nyu_vitb", [f"output_dir={tmp_path}", f"train.max_steps={total}",
                                                          "train.task_head_lr_mult=0.1", "train.report_to=[]"])
    model = DenseSplitModel.from_tower(tiny_ckpts["dinov2"], ViTSplitConfig(task_layers=2, prior_layers=[1, 3]),
                                       DenseModelConfig(task="depth"))
    trainer = DenseTrainer(model=model, args=training_arguments(cfg), task_head_lr_mult=0.1)
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    slow = {id(p) for p in model.task_head_parameters()}
    is_slow = [any(id(p) in slow for p in group["params"]) for group in optimizer.param_groups]
    assert sorted(set(is_slow)) == [False, True]
    for step in range(total):
        expected = mmcv_one_cycle(step, 3e-4, total, 0.3, 25.0, 100.0)
        for group, slow_group in zip(optimizer.param_groups, is_slow):
            assert group["lr"] == pytest.approx(expected * (0.1 if slow_group else 1.0), rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()
    assert mmcv_one_cycle(59, 3e-4, total, 0.3, 25.0, 100.0) == pytest.approx(3e-4)  # the peak ends the rising 30%
    assert all("momentum" not in g and g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)  # not cycled


@pytest.mark.parametrize("override, message", [
    ("train.lr_scheduler_kwargs={pct_start: 0.2}", "train.lr_scheduler_kwargs: pct_start not taken by one_cycle; it "
     "takes div_factor, final_div_factor, anneal_strategy, three_phase (its rising phase is warmup_steps)."),
    ("train.warmup_steps=0", "train.warmup_steps: 0.0: one_cycle rises for warmup_steps, which must be > 0 and less "
     "than max_steps (a fraction < 1 of all steps, or a number of steps)."),
    ("train.warmup_steps=38400", "train.warmup_steps: 38400.0: one_cycle rises for warmup_steps, which must be > 0"),
])
def test_one_cycle_settings_are_checked_at_load(override, message):
    with pytest.raises(ValueError) as err:
        load_config(DenseRunConfig, "dense_nyu_vitb", [override])
    assert message in str(err.value)
