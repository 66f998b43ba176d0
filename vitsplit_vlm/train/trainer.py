"""HF Trainer wiring for one stage: TrainingArguments from the stage config, per-part learning rates, length grouping.

The training loop, ZeRO, mixed precision, checkpoint/resume, TensorBoard and the progress bar are the Trainer's; this
module only adds what it cannot express by arguments: optimizer parameter groups with one LR per model part (the
task head's LR multiplier, the projector's own LR) and LLaVA-style length grouping from lengths the dataset already
knows (the Trainer would otherwise load every image to measure them).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .config import StageConfig
from .model_setup import learning_rates, parameter_parts
from .optim import grouped_param_groups


def training_arguments(stage: StageConfig, output_dir: Path, seed: int) -> TrainingArguments:
    """The Trainer's arguments for `stage`. Build them before the model: a ZeRO-3 config here makes transformers
    create and load it partitioned (zero.Init), with the "auto" fields (bf16, batch sizes) already resolved."""
    args = dict(
        output_dir=str(output_dir),
        deepspeed=stage.deepspeed,
        use_cpu=not torch.cuda.is_available(),  # on CPU the Trainer otherwise disagrees with DeepSpeed on world size
        bf16=stage.bf16,
        activation_checkpointing=stage.gradient_checkpointing,
        learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay,
        warmup_steps=stage.warmup_steps,
        lr_scheduler_type=stage.lr_scheduler_type,
        max_grad_norm=stage.max_grad_norm,
        num_train_epochs=stage.num_train_epochs,
        max_steps=stage.max_steps,
        per_device_train_batch_size=stage.per_device_train_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=stage.dataloader_num_workers,
        remove_unused_columns=False,  # items are model kwargs already; the model's forward takes **kwargs
        report_to=["tensorboard"],
        disable_tqdm=False,
    )
    return TrainingArguments(**{**args, **stage.trainer_args})


class VitSplitTrainer(Trainer):
    """`Trainer` with one AdamW parameter group per (part, weight decay) and dataset-provided length grouping."""

    def __init__(self, *args, stage: StageConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        parts = parameter_parts(model)  # trainable parameters only
        param_groups = grouped_param_groups(
            model, lambda name, _: parts.get(name), learning_rates(self.stage),
            set(self.get_decay_parameter_names(model)), self.args.weight_decay,
        )
        # torch AdamW: on DeepSpeed's tested list, so no JIT-built DeepSpeed optimizer is ever needed.
        self.optimizer = torch.optim.AdamW(
            param_groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.stage.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[abs(n) for n in dataset.modality_lengths],
        )
