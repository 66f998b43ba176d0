"""Model building per stage: components -> VLM (or an earlier stage's whole model), stage-1 weights in, parts
(un)frozen; per-part LRs.

The model is built after the stage's `TrainingArguments`, so the stage's own DeepSpeed config is the active one:
under ZeRO-3 `from_components` creates and loads every part partitioned (`zero.Init`, transformers' DeepSpeed
integration) and the stage-1 weights are written through gathered parameters, so no rank ever holds the whole
model; under ZeRO-2 or without DeepSpeed each rank builds it whole, as the Trainer expects.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import VitSplitLlavaForConditionalGeneration
from ..models.loading import DTYPES
from ..vision import ViTSplitConfig, resolve_split
from ..zero3 import full_numel
from .checkpoint import load_stage1_weights, stage1_weights_path
from .config import ModelConfig, StageConfig
from .lora import part_module_names

logger = logging.getLogger(__name__)

# Prefix peft puts in front of every parameter name, and the segments it inserts around wrapped modules.
_PEFT_PREFIX = "base_model.model."
_PEFT_SEGMENTS = re.compile(r"\.(modules_to_save\.default|original_module)(?=\.|$)")


@dataclass(frozen=True)
class Components:
    vision_tower: Path
    language_model: Path


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def split_config(model_cfg: ModelConfig) -> ViTSplitConfig:
    return resolve_split(model_cfg.split, model_cfg.split_options)


def fresh_model(model_cfg: ModelConfig, components: Components) -> VitSplitLlavaForConditionalGeneration:
    """Tower + LM from their checkpoints, new projector/heads; partitioned when a ZeRO-3 config is active."""
    return VitSplitLlavaForConditionalGeneration.from_components(
        components.vision_tower, components.language_model, split=split_config(model_cfg),
        projector_type=model_cfg.projector_type, dtype=torch_dtype(model_cfg.dtype),
    )


def is_whole_model(path: Path) -> bool:
    """A `save_pretrained` model dir (an LM-training stage's `final/`), as opposed to stage-1 weights."""
    return (Path(path) / "config.json").is_file()


def build_stage_model(
    model_cfg: ModelConfig, components: Components, stage: StageConfig, init_from: Path | None
) -> VitSplitLlavaForConditionalGeneration:
    """The model a stage starts from, with exactly the configured parts trainable (before any LoRA wrapping).

    `init_from` is stage-1 weights (projector/heads over a fresh model) or the whole model an earlier stage of the
    run saved (a `final/` dir), so a stage that follows full fine-tuning continues from it."""
    if init_from is not None and is_whole_model(init_from):
        model = VitSplitLlavaForConditionalGeneration.from_pretrained(init_from, dtype=torch_dtype(model_cfg.dtype))
        logger.info("starting from the whole model in %s", init_from)
    else:
        model = fresh_model(model_cfg, components)
        if init_from is not None:
            keys = load_stage1_weights(model, init_from)
            logger.info("loaded %d stage-1 tensors from %s", len(keys), stage1_weights_path(init_from))
    model.set_trainable(stage.train_parts)
    return model


def base_parameter_name(name: str) -> str:
    """A parameter's name in the plain model, whether or not it sits inside a peft wrapper."""
    return _PEFT_SEGMENTS.sub("", name.removeprefix(_PEFT_PREFIX))


def parameter_parts(model: nn.Module) -> dict[str, str]:
    """Trainable parameter name -> part; LoRA adapter weights count as language_model."""
    prefixes = sorted(
        ((name + ".", part) for part, names in part_module_names(_unwrap(model)).items() for name in names),
        key=lambda item: -len(item[0]),
    )
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        base = base_parameter_name(name)
        out[name] = next((part for prefix, part in prefixes if base.startswith(prefix)), "language_model")
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def learning_rates(stage: StageConfig) -> dict[str, float]:
    """Per-part LR: the vision side may have its own (projector_lr), the task head a multiplier on it."""
    vision = stage.projector_lr if stage.projector_lr is not None else stage.learning_rate
    return {
        "task_head": vision * stage.task_head_lr_mult,
        "prior_head": vision,
        "projector": vision,
        "language_model": stage.learning_rate,
    }


def trainable_parameter_table(model: nn.Module) -> str:
    """The model's per-part table (tower, task head, prior head, projector, LM). Under LoRA the LM's trainable
    count is its adapters, and each fully trained module also counts its frozen original in the total."""
    rows = [(r.part, r.trainable, r.total) for r in _unwrap(model).trainable_parameter_table()]
    trainable = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(full_numel(p) for p in model.parameters())
    lines = [f"{'part':<16}{'trainable':>14}{'total':>14}"]
    lines += [f"{part:<16}{t:>14,}{n:>14,}" for part, t, n in rows]
    lines.append(f"{'all':<16}{trainable:>14,}{total:>14,}  ({100 * trainable / max(total, 1):.2f}% trainable)")
    return "\n".join(lines)
