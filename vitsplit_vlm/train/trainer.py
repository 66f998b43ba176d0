"""HF Trainer wiring for one VLM stage: per-part learning rates and length grouping on the shared engine.

The training loop, ZeRO, mixed precision, checkpoint/resume, TensorBoard and the progress bar are the Trainer's; the
arguments and the optimizer come from :mod:`vitsplit_vlm.train.engine` (shared with the dense trainer). This module
adds only what is particular to the VLM: one LR per model part (the task head's multiplier, the projector's own LR)
and LLaVA-style length grouping from lengths the dataset already knows (the Trainer would otherwise load every
image to measure them).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import engine
from .config import StageConfig
from .model_setup import learning_rates, parameter_parts


def training_arguments(stage: StageConfig, output_dir: Path, seed: int) -> TrainingArguments:
    """The Trainer's arguments for `stage`. Build them before the model: a ZeRO-3 config here makes transformers
    create and load it partitioned (zero.Init), with the "auto" fields (bf16, batch sizes) already resolved."""
    return engine.training_arguments(stage, output_dir, seed, activation_checkpointing=stage.gradient_checkpointing)


class VitSplitTrainer(engine.GroupedLRTrainer):
    """One parameter group per (part, weight decay) and dataset-provided length grouping."""

    def __init__(self, *args, stage: StageConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage

    def lr_classes(self, model: nn.Module):
        parts = parameter_parts(model)  # trainable parameters only
        return (lambda name, _: parts.get(name)), learning_rates(self.stage)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.stage.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[abs(n) for n in dataset.modality_lengths],
        )
