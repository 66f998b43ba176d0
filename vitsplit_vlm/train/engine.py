"""The training engine both trainers use: the shared recipe fields, the Trainer's arguments built from them, and a
Trainer whose optimizer gives each class of parameters its own learning rate.

Why one module: the VLM stages (`train/stage.py`) and the dense heads (`dense/train.py`) train with the same
Hugging Face `Trainer` and differ only in which parameters get which LR and in a few arguments. Kept apart they
drifted (one honoured `optim`, the other always built AdamW); here the recipe is validated once when the config
loads, the optimizer class is always the Trainer's own choice for `optim`, and both get the same LR schedule.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ..config import ConfigError, shipped_config_names, shipped_deepspeed

OPTIMIZERS = tuple(o.value for o in OptimizerNames)
# Schedules transformers lacks, built from torch's own class: name -> the lr_scheduler_kwargs they take.
TORCH_SCHEDULERS = {"one_cycle": ("div_factor", "final_div_factor", "anneal_strategy", "three_phase")}
SCHEDULERS = tuple(s.value for s in SchedulerType) + tuple(TORCH_SCHEDULERS)


@dataclass
class TrainingRecipe:
    """Optimisation settings both trainers share (each trainer's config subclasses it with its own defaults).
    Checked when the config is built, so a bad value stops the run before any model loads."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optim: str = "adamw_torch"  # any TrainingArguments.optim, applied to the per-class parameter groups
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    warmup_steps: float = 0.03  # >= 1: steps; < 1: fraction of all steps (LLaVA: warmup_ratio 0.03)
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    save_steps: int = 500  # 0: no intermediate checkpoints
    save_total_limit: int | None = 1
    deepspeed: str | None = None  # a DeepSpeed JSON path or shipped name (zero2, zero3, zero3_offload); None = plain Trainer
    bf16: bool = False
    dataloader_num_workers: int = 0
    trainer_args: dict = field(default_factory=dict)  # any other TrainingArguments, e.g. {tf32: true} on Ampere GPUs

    def __post_init__(self) -> None:
        checks = [
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0 (steps, or a fraction < 1 of all steps)"),
            ("max_steps", self.max_steps >= -1, "must be > 0, or -1 to train num_train_epochs"),
            ("num_train_epochs", self.num_train_epochs >= 0, "must be >= 0"),
            ("per_device_train_batch_size", self.per_device_train_batch_size >= 1, "must be >= 1"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0 (0 turns clipping off)"),
            ("logging_steps", self.logging_steps >= 1, "must be >= 1"),
            ("save_steps", self.save_steps >= 0, "must be >= 0 (0: no intermediate checkpoints)"),
            ("save_total_limit", self.save_total_limit is None or self.save_total_limit >= 1, "must be >= 1 or null"),
            ("dataloader_num_workers", self.dataloader_num_workers >= 0, "must be >= 0"),
            ("optim", self.optim in OPTIMIZERS, f"choose one of {', '.join(OPTIMIZERS)}"),
            ("lr_scheduler_type", self.lr_scheduler_type in SCHEDULERS, f"choose one of {', '.join(SCHEDULERS)}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{getattr(self, name)!r}: {rule}.", key=name)
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps > 0 or num_train_epochs > 0.")
        if self.lr_scheduler_type in TORCH_SCHEDULERS:
            self._check_torch_schedule()
        self.deepspeed = shipped_deepspeed(self.deepspeed)
        if self.deepspeed and not Path(self.deepspeed).is_file():
            raise ConfigError(f"DeepSpeed config {self.deepspeed} does not exist; give a JSON file or a shipped name "
                              f"({', '.join(shipped_config_names('deepspeed'))}).", key="deepspeed")

    def _check_torch_schedule(self) -> None:
        """one_cycle: its rising phase is warmup_steps (torch's pct_start), which must leave a falling phase."""
        known = TORCH_SCHEDULERS[self.lr_scheduler_type]
        unknown = sorted(set(self.lr_scheduler_kwargs) - set(known))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)} not taken by {self.lr_scheduler_type}; it takes {', '.join(known)} "
                              "(its rising phase is warmup_steps).", key="lr_scheduler_kwargs")
        steps = self.max_steps if self.max_steps > 0 else math.inf
        if not (0 < self.warmup_steps < 1 or 1 <= self.warmup_steps < steps):
            raise ConfigError(f"{self.warmup_steps!r}: {self.lr_scheduler_type} rises for warmup_steps, which must be > 0 "
                              "and less than max_steps (a fraction < 1 of all steps, or a number of steps).",
                              key="warmup_steps")


@dataclass
class RecipeArguments(TrainingArguments):
    """TrainingArguments that can name a schedule of TORCH_SCHEDULERS, which the engine's Trainer builds; the
    Trainer's own `lr_scheduler_type` is then "constant" and never built."""

    torch_lr_scheduler: str | None = None


def training_arguments(recipe: TrainingRecipe, output_dir: str | Path, seed: int, **extra) -> RecipeArguments:
    """The Trainer's arguments for `recipe`; `extra` are a trainer's own (then `recipe.trainer_args` win).
    A ZeRO-3 config here turns on zero.Init for every later `from_pretrained` in the process."""
    torch_schedule = recipe.lr_scheduler_type if recipe.lr_scheduler_type in TORCH_SCHEDULERS else None
    args = dict(
        output_dir=str(output_dir),
        deepspeed=recipe.deepspeed,
        use_cpu=not torch.cuda.is_available(),  # on CPU the Trainer otherwise disagrees with DeepSpeed on world size
        bf16=recipe.bf16,
        optim=recipe.optim,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type="constant" if torch_schedule else recipe.lr_scheduler_type,
        torch_lr_scheduler=torch_schedule,
        lr_scheduler_kwargs=dict(recipe.lr_scheduler_kwargs),
        warmup_steps=recipe.warmup_steps,
        max_grad_norm=recipe.max_grad_norm,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if recipe.save_steps else "no",
        save_steps=recipe.save_steps or 500,
        save_total_limit=recipe.save_total_limit,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=recipe.dataloader_num_workers,
        remove_unused_columns=False,  # items are model kwargs already
        report_to=["tensorboard"],
        disable_tqdm=False,
    )
    return RecipeArguments(**{**args, **extra, **recipe.trainer_args})


def grouped_param_groups(
    model: nn.Module,
    lr_class_of: Callable[[str, nn.Parameter], str | None],
    lrs: Mapping[str, float],
    decay_names: set[str],
    weight_decay: float,
) -> list[dict]:
    """One group per (LR class, decayed) with `lrs[class]` and `weight_decay` (0 for names not in `decay_names`).

    `lr_class_of(name, param)` names a parameter's LR class; None leaves the parameter out (frozen). Groups come in
    sorted key order, so the first group, whose LR the Trainer logs as `learning_rate`, is the same in every run.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        lr_class = lr_class_of(name, param)
        if lr_class is not None:
            groups.setdefault((lr_class, name in decay_names), []).append(param)
    return [
        {"params": params, "lr": lrs[lr_class], "weight_decay": weight_decay if decayed else 0.0}
        for (lr_class, decayed), params in sorted(groups.items())
    ]


def poly_factor(step: int, warmup: int, total: int, power: float, end_ratio: float) -> float:
    """mmseg's poly schedule as a multiplier of each group's lr: linear warmup, then (1 - progress)^power down to
    `end_ratio` (HF's "polynomial" formula, lr_end / lr = end_ratio)."""
    if step < warmup:
        return step / max(1, warmup)
    remaining = max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    return (1.0 - end_ratio) * remaining**power + end_ratio


class GroupedLRTrainer(Trainer):
    """`Trainer` whose optimizer (the class `args.optim` names) has one parameter group per (LR class, weight decay).

    Subclasses say which class each trainable parameter is in and each class's LR (:meth:`lr_classes`). The
    scheduler scales every group by the same factor, so the LR ratios hold for the whole run.
    """

    def lr_classes(self, model: nn.Module) -> tuple[Callable[[str, nn.Parameter], str | None], dict[str, float]]:
        raise NotImplementedError

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        lr_class_of, lrs = self.lr_classes(model)
        param_groups = grouped_param_groups(
            model, lr_class_of, lrs, set(self.get_decay_parameter_names(model)), self.args.weight_decay
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _run_epoch(self, *args, **kwargs):
        """Resumed from a checkpoint already at `max_steps` (a run killed while writing its final model), the
        Trainer (5.24) would still take one more step before its end-of-step check: take none, so the output is
        rebuilt from that checkpoint exactly."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """"polynomial" as a plain LambdaLR: the Trainer's own reads `optimizer.defaults`, which DeepSpeed's ZeRO
        optimizer lacks (transformers 5.24 fails there); "one_cycle" is torch's OneCycleLR; other schedule types
        are the Trainer's."""
        optimizer = optimizer or self.optimizer
        if self.lr_scheduler is None and self.args.lr_scheduler_type == "polynomial":
            kwargs = {"power": 1.0, "lr_end": 1e-7, **(self.args.lr_scheduler_kwargs or {})}
            factor = partial(
                poly_factor, warmup=self.args.get_warmup_steps(num_training_steps), total=num_training_steps,
                power=kwargs["power"], end_ratio=kwargs["lr_end"] / self.args.learning_rate,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            self._created_lr_scheduler = True
        elif self.lr_scheduler is None and getattr(self.args, "torch_lr_scheduler", None) == "one_cycle":
            self.lr_scheduler = one_cycle(optimizer, num_training_steps, self.args.warmup_steps,
                                          self.args.lr_scheduler_kwargs or {})
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


def one_cycle(optimizer: torch.optim.Optimizer, total: int, rising: float, kwargs: Mapping) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's OneCycleLR peaking at each group's own lr after `rising` steps (a fraction < 1: of `total`, used as
    pct_start itself, so 0.3 is mmcv's 0.3 exactly, not a step count rounded up), without momentum cycling: mmcv's
    OneCycleLrUpdaterHook (the depth toolbox's `policy='OneCycle'`), whose phases are torch's, with no momentum hook
    in those configs. Each group keeps its lr ratio (mmcv, given one max_lr, gives every group that same peak)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total,
        pct_start=rising if rising < 1 else rising / total, cycle_momentum=False, **kwargs,
    )
