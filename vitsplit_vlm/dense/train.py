"""Train a dense head (segmentation or depth) on a ViT-Split module with the Hugging Face Trainer.

The Trainer owns the loop, DeepSpeed, TensorBoard, checkpoints and the progress bar. This module adds the run
config, where the split module comes from (a tower checkpoint, the tiny demo tower, or a VLM checkpoint: one split
module, two tasks), the paper's lower learning rate for the split task head, and the sliding-window evaluation the
Trainer's own loop cannot do.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import TrainingArguments, default_data_collator

from ..config import ConfigError
from ..local_dirs import check_vision_tower_dir
from ..train import engine
from ..train.distributed import init_distributed
from ..train.logs import RunLogCallback, setup_logging
from ..vision import SPLIT_PRESETS, ViTSplit, load_tower, resolve_split
from .data import DenseDataConfig, build_datasets
from .inference import evaluate
from .config import DenseModelConfig
from .model import DenseSplitModel, load_split_from_vlm

logger = logging.getLogger("vitsplit_vlm.dense")


@dataclass
class DenseTrainingConfig(engine.TrainingRecipe):
    """The shared recipe (learning_rate, optim, max_steps, deepspeed, ...) with the paper's dense defaults."""

    task_head_lr_mult: float = 0.1  # the paper's lr_mult for the split task head (copied tower blocks)
    weight_decay: float = 0.01
    lr_scheduler_type: str = "polynomial"  # mmseg's poly schedule
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"power": 0.9, "lr_end": 0.0})
    warmup_steps: float = 0.05  # int: steps; float in [0, 1): fraction of max_steps
    max_steps: int = 300
    per_device_train_batch_size: int = 8
    logging_steps: int = 10
    save_steps: int = 0  # 0: no intermediate Trainer checkpoints, only the final save_pretrained
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class DenseEvalConfig:
    crop_size: int | None = 84  # sliding-window size; None: whole images in one pass
    stride: int | None = 56
    flip: bool = False  # test-time augmentation: average with the flipped image
    scales: list[float] | None = None  # multi-scale TTA, ratios of the eval size (mmseg's aug_test: 0.5..1.75)


@dataclass
class DenseRunConfig:
    output_dir: str = "runs/dense"
    tower: str | None = None  # vision tower saved with save_pretrained; None: a tiny demo DINOv2 built in output_dir
    init_from_vlm: str | None = None  # a VLM checkpoint dir: use its split module (tower + trained heads)
    model: DenseModelConfig = field(default_factory=DenseModelConfig)
    data: DenseDataConfig = field(default_factory=DenseDataConfig)
    train: DenseTrainingConfig = field(default_factory=DenseTrainingConfig)
    eval: DenseEvalConfig = field(default_factory=DenseEvalConfig)

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "split_preset": "name the preset in model.split (e.g. model.split: dinov2-s), as the VLM configs do.",
        "split": "name a preset in model.split and give settings over it in model.split_options "
        "(e.g. model.split_options: {task_layers: 2, prior_layers: [1, 3, 5]}), as the VLM configs do.",
    }

    def __post_init__(self) -> None:
        """Checkpoint directories are checked when the config loads, before any data or model is built."""
        if self.init_from_vlm and self.tower:
            raise ConfigError("Set either tower or init_from_vlm: the VLM checkpoint already holds its tower.")
        if self.tower:
            check_vision_tower_dir(self.tower, "tower")
        if self.init_from_vlm and not (Path(self.init_from_vlm) / "config.json").is_file():
            raise ConfigError(f"no config.json in {self.init_from_vlm}: pass a saved VLM checkpoint dir.", key="init_from_vlm")


class DenseTrainer(engine.GroupedLRTrainer):
    """The split task head trains at lr x `task_head_lr_mult`, the rest at lr."""

    def __init__(self, *args, task_head_lr_mult: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.task_head_lr_mult = task_head_lr_mult

    def lr_classes(self, model: nn.Module):
        slow = {id(p) for p in self.model.task_head_parameters()}

        def lr_class(_: str, param: nn.Parameter) -> str | None:
            if not param.requires_grad:
                return None
            return "task_head" if id(param) in slow else "rest"  # sorted: "rest" first, the Trainer logs its LR

        lr = self.args.learning_rate
        return lr_class, {"rest": lr, "task_head": lr * self.task_head_lr_mult}


def _processor_stats(checkpoint_dir: Path) -> tuple[list[float], list[float]] | None:
    """The image_mean / image_std the tower was pretrained with, from its saved image processor config."""
    path = checkpoint_dir / "preprocessor_config.json"
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    if "image_mean" not in stats or "image_std" not in stats:
        return None
    return list(stats["image_mean"]), list(stats["image_std"])


def build_split(cfg: DenseRunConfig) -> tuple[ViTSplit, Path]:
    """The split module and the checkpoint directory it came from."""
    model = cfg.model
    if cfg.init_from_vlm:
        if model.split or model.split_options:
            raise ConfigError(
                "Set either model.split/model.split_options or init_from_vlm: the VLM checkpoint already holds its split."
            )
        return load_split_from_vlm(cfg.init_from_vlm), Path(cfg.init_from_vlm)
    if model.split is None:
        raise ConfigError(
            f"model.split is not set: name a split preset ({', '.join(sorted(SPLIT_PRESETS))}) or set init_from_vlm."
        )
    split_config = resolve_split(model.split, model.split_options)
    tower_dir = Path(cfg.tower) if cfg.tower else None
    if tower_dir is None:
        from ..tiny import build_tiny_checkpoints

        tower_dir = build_tiny_checkpoints(Path(cfg.output_dir) / "tiny", size="demo", seed=cfg.train.seed)["dinov2"]
    return ViTSplit(load_tower(tower_dir), split_config), tower_dir


def _check_deepspeed_stage(path: str | None) -> None:
    if path and json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0) == 3:
        raise ConfigError(
            f"{path}: ZeRO-3 partitions the weights, which the sliding-window evaluation and save_pretrained read "
            "whole; dense models are small, use ZeRO-2 (deepspeed: zero2)."
        )


def training_arguments(cfg: DenseRunConfig) -> TrainingArguments:
    return engine.training_arguments(
        cfg.train, cfg.output_dir, cfg.train.seed, report_to=cfg.train.report_to,
        ddp_find_unused_parameters=False,  # every trainable parameter is used in every step
    )


def train(cfg: DenseRunConfig) -> dict:
    """Train, save `<output_dir>/model`, evaluate on the validation set; returns the validation metrics.

    Under several ranks, only rank 0 writes the tiny tower, the synthetic set, logs, the model and the metrics
    (other ranks wait for the files, and return {}).
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.deepspeed:  # without DeepSpeed the Trainer (accelerate) sets up torchrun / accelerate launches
        _check_deepspeed_stage(cfg.train.deepspeed)
        init_distributed(use_deepspeed=True)
    args = training_arguments(cfg)
    main = args.process_index == 0
    setup_logging(out / "train.log" if main else None)
    torch.manual_seed(cfg.train.seed)
    with args.main_process_first(desc="tower and data files"):
        split, source = build_split(cfg)
        stats = _processor_stats(source)
        if stats:
            cfg.model.image_mean, cfg.model.image_std = stats
        train_set, val_set = build_datasets(cfg.data, cfg.model, out)
    model = DenseSplitModel(split, cfg.model)
    if main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info("config: %s", json.dumps(asdict(cfg)))
        logger.info("split from %s; trainable parameters: %d; train/val images: %d/%d",
                    source, trainable, len(train_set), len(val_set))
    trainer = DenseTrainer(
        model=model, args=args, train_dataset=train_set, data_collator=default_data_collator,
        callbacks=[RunLogCallback(f"dense-{cfg.model.task}")], task_head_lr_mult=cfg.train.task_head_lr_mult,
    )
    trainer.train()
    if not main:
        return {}
    logger.info("trained as %s", type(trainer.model_wrapped).__name__)  # DeepSpeedEngine under --deepspeed
    model.save_pretrained(out / "model")
    metrics = evaluate(
        model, val_set, cfg.eval.crop_size, cfg.eval.stride, progress=True, flip=cfg.eval.flip, scales=cfg.eval.scales
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("validation metrics: %s", json.dumps(metrics))
    return metrics
