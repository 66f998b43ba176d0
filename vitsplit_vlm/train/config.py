"""Run configuration of `scripts/train_vqa.py`: which parts train in each stage, on what data, with which recipe.

A run has up to two stages (`stage1`: alignment, `stage2`: instruction tuning) and an optional evaluation; a
config file fills only the sections it uses (the shipped `stage1_align` only `stage1`, `demo` all of them).
Everything is checked by :func:`check_train_config` before any model is built, so a wrong part name or a LoRA/LM
clash fails in a second rather than after the model loads.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..conversation import TEMPLATES
from ..data.synthetic import QUESTION_TYPES
from ..local_dirs import check_language_model_dir, check_vision_tower_dir
from ..models.modeling_vitsplit_llava import TRAINABLE_PARTS
from .checkpoint import IncompatibleCheckpointError, read_stage1_metadata
from .engine import TrainingRecipe

TINY_TOWERS = ("clip", "dinov2", "dinov2_reg", "siglip")


@dataclass
class ModelConfig:
    """The components. With no paths, tiny random checkpoints of `tiny_size` are written into the run's output dir."""

    vision_tower: str | None = None  # a save_pretrained dir, e.g. a hand-downloaded openai/clip-vit-large-patch14-336
    language_model: str | None = None  # LM + tokenizer dir, e.g. lmsys/vicuna-7b-v1.5
    split: str = "clip-l-vlm"  # a vitsplit_vlm.vision preset name
    split_options: dict = field(default_factory=dict)  # ViTSplitConfig fields over the preset, e.g. {fusion_dim: 4096}
    projector_type: str = "mlp2x_gelu"
    dtype: str = "float32"  # dtype the components load in; mixed precision is `bf16` in the stage
    tiny_size: str = "demo"  # used only when a path above is missing
    tiny_tower: str = "clip"


@dataclass
class DataConfig:
    """LLaVA conversation JSON + image folder. With `train_json` unset, the run's synthetic set is used."""

    train_json: str | list[str] | None = None  # several files are trained on as one mixed set
    image_folder: str | None = None  # the image paths of every train_json file are relative to it
    # Without train_json: these files of the synthetic set (train.json: VQA turns, stage1.json: captions).
    synthetic_file: str | list[str] = "train.json"
    template: str = "vicuna_v1"
    model_max_length: int = 2048
    skip_bad_samples: bool = False
    pad_to_square: bool = False  # LLaVA-1.5's image_aspect_ratio=pad: no centre crop cuts the long side
    num_proc: int | None = None  # worker processes for the one-off tokenisation (cached by `datasets`)


@dataclass
class LoraConfig:
    """peft LoRA on the language model's linear layers (the vision side never gets LoRA)."""

    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class StageConfig(TrainingRecipe):
    """One training stage: the parts it trains, its data, and its optimisation recipe (the shared
    :class:`~vitsplit_vlm.train.engine.TrainingRecipe` fields: learning_rate, optim, max_steps, deepspeed, ...)."""

    train_parts: list[str] = field(default_factory=lambda: ["projector", "prior_head"])
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Stage-1 weights (projector + heads) to start from: a non_lm_trainables.safetensors file or a stage-1 output
    # dir. Unset in a run that also has stage1 = that stage's output: its projector/heads, or its whole model when it
    # trained the language model.
    init_from: str | None = None
    require_init: bool = False  # refuse to start from untrained projector/heads (instruction tuning)
    # LR of the vision-side trainables (projector, prior head, task head), LLaVA's mm_projector_lr: in ViT-Split the
    # heads are part of the projector. None = learning_rate.
    projector_lr: float | None = None
    task_head_lr_mult: float = 1.0  # task-head LR = projector LR * this (the paper's dense recipe uses 0.1)
    gradient_checkpointing: bool = False
    group_by_length: bool = False  # LLaVA's group_by_modality_length, through the Trainer's length grouping
    resume: bool = False  # continue from the latest complete checkpoint-* in this stage's output dir


@dataclass
class SyntheticVQAConfig:
    """The built-in synthetic VQA set (generated into `<output_dir>/data` when a stage has no train_json)."""

    num_train: int = 2000
    num_val: int = 200
    image_size: int = 84
    seed: int = 0
    questions_per_image: int = 5  # one multi-turn conversation per train image, one question per type


@dataclass
class EvalConfig:
    """Greedy generation on held-out questions after the last stage, scored with VQA accuracy."""

    val_json: str | None = None  # None = the synthetic held-out split
    image_folder: str | None = None
    max_new_tokens: int = 8
    batch_size: int = 16
    limit: int | None = None  # evaluate only the first N questions


@dataclass
class RunConfig:
    output_dir: str = "outputs/run"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    synthetic: SyntheticVQAConfig = field(default_factory=SyntheticVQAConfig)
    stage1: StageConfig | None = None
    stage2: StageConfig | None = None
    eval: EvalConfig | None = None


def component_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's overrides, then `--vision_tower` / `--language_model` as the model keys they set."""
    return list(args.overrides) + [f"model.{key}={getattr(args, key)}" for key in ("vision_tower", "language_model")
                                   if getattr(args, key)]


def stages(config: RunConfig) -> list[tuple[str, StageConfig]]:
    return [(name, stage) for name, stage in (("stage1", config.stage1), ("stage2", config.stage2)) if stage]


def check_train_config(config: RunConfig) -> None:
    """Reject inconsistent settings before anything heavy is built."""
    if not stages(config):
        raise ConfigError("the config defines no stage: add a `stage1:` and/or `stage2:` section.")
    if config.model.vision_tower:
        check_vision_tower_dir(config.model.vision_tower, "model.vision_tower")
    if config.model.language_model:
        check_language_model_dir(config.model.language_model, "model.language_model")
    if not 1 <= config.synthetic.questions_per_image <= len(QUESTION_TYPES):
        raise ConfigError(
            f"synthetic.questions_per_image={config.synthetic.questions_per_image}: must be 1-{len(QUESTION_TYPES)} "
            "(one question per type)."
        )
    if config.model.tiny_tower not in TINY_TOWERS:
        raise ConfigError(f"model.tiny_tower={config.model.tiny_tower!r}; choose one of {', '.join(TINY_TOWERS)}.")
    for name, stage in stages(config):
        _check_stage(name, stage)
        if config.model.dtype != "float32" and not stage.deepspeed:
            raise ConfigError(
                f"model.dtype={config.model.dtype} without DeepSpeed would train {name} in pure {config.model.dtype} "
                "(no float32 master weights): set a DeepSpeed config (it keeps them) or model.dtype=float32 with bf16: true."
            )
    if config.stage1 and config.stage1.lora.enabled and config.stage2 and not config.stage2.init_from:
        raise ConfigError(
            "stage1 trains LoRA adapters, which stage2 cannot continue from: train stage1's language model fully "
            "(language_model in train_parts) or make the LoRA stage the last one."
        )
    if config.stage2 and config.stage2.require_init and not config.stage2.init_from and not config.stage1:
        raise ConfigError(
            "stage2 needs stage-1 weights (require_init: true): set stage2.init_from=<stage-1 output dir or its "
            "non_lm_trainables.safetensors>, or add a stage1 section to this config."
        )


def _check_stage(name: str, stage: StageConfig) -> None:
    unknown = sorted(set(stage.train_parts) - set(TRAINABLE_PARTS))
    if unknown:
        raise ConfigError(f"{name}.train_parts: unknown part(s) {', '.join(unknown)}; known parts: {', '.join(TRAINABLE_PARTS)}.")
    if not stage.train_parts and not stage.lora.enabled:
        raise ConfigError(f"{name}: nothing to train: train_parts is empty and LoRA is off.")
    if stage.lora.enabled and "language_model" in stage.train_parts:
        raise ConfigError(
            f"{name}: lora.enabled trains the language model through LoRA adapters; remove 'language_model' from "
            "train_parts (full fine-tuning and LoRA of the same weights exclude each other)."
        )
    if stage.data.template not in TEMPLATES:
        raise ConfigError(f"{name}.data.template={stage.data.template!r}; choose one of {', '.join(TEMPLATES)}.")
    if stage.init_from:
        if not Path(stage.init_from).exists():
            raise ConfigError(f"{name}.init_from: {stage.init_from} does not exist (expected a stage-1 output).")
        try:
            read_stage1_metadata(stage.init_from)  # the header only: a truncated or foreign file fails now
        except IncompatibleCheckpointError as err:
            raise ConfigError(f"{name}.init_from: {err}") from None
    if stage.data.train_json and not stage.data.image_folder:
        raise ConfigError(f"{name}.data.image_folder: required with train_json (image paths are relative to it).")
    for path in [stage.data.train_json] if isinstance(stage.data.train_json, str) else stage.data.train_json or []:
        if not Path(path).is_file():
            raise ConfigError(f"{name}.data.train_json: no such data file {path}.")
    if stage.data.image_folder and not Path(stage.data.image_folder).is_dir():
        raise ConfigError(f"{name}.data.image_folder: no such directory {stage.data.image_folder}.")
