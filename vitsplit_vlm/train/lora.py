"""peft LoRA for the language model, and merging a trained adapter back into one plain model.

The whole VLM is wrapped (not just its LM), so the adapter also carries the projector/heads that a LoRA stage trains
fully (`modules_to_save`): one adapter directory then restores everything the stage learned, for resume and for
`merge_and_unload`, and the Trainer saves and reloads it natively.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from ..config import ConfigError
from ..models import VitSplitLlavaForConditionalGeneration
from ..models.processing_vitsplit_llava import VitSplitLlavaProcessor
from .config import LoraConfig


def part_module_names(model: nn.Module) -> dict[str, list[str]]:
    """Module names of each part, e.g. {"projector": ["projector"], "task_head": ["vision.task_blocks", ...]}."""
    names = {id(module): name for name, module in model.named_modules()}
    return {part: [names[id(m)] for m in modules] for part, modules in model.part_modules().items()}


def modules_to_save(model: nn.Module, parts: list[str]) -> list[str]:
    """Full names of the non-LM modules of `parts`; a ModuleList is replaced by its elements, because peft's
    wrapper around the list itself would not be iterable for the split module that loops over it."""
    out = []
    for part, module_names in part_module_names(model).items():
        if part not in parts or part == "language_model":
            continue
        for name in module_names:
            module = model.get_submodule(name)
            if isinstance(module, nn.ModuleList):
                out.extend(f"{name}.{i}" for i in range(len(module)))
            elif any(True for _ in module.parameters()):
                out.append(name)
    return out


def apply_lora(model: VitSplitLlavaForConditionalGeneration, lora: LoraConfig, train_parts: list[str]) -> nn.Module:
    """LoRA on the LM's linear layers only: a regex on the full module name keeps the tower's and the task head's
    own q/k/v projections out."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = "|".join(re.escape(t) for t in lora.target_modules)
    config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=rf"language_model\..*\.({targets})", modules_to_save=modules_to_save(model, train_parts),
    )
    return get_peft_model(model, config)


def merge_lora(model_dir: str | Path, adapter_dir: str | Path) -> VitSplitLlavaForConditionalGeneration:
    """The base model with the adapter merged in (LoRA deltas added, fully trained modules swapped in)."""
    from peft import PeftModel

    for path, marker in ((Path(model_dir), "config.json"), (Path(adapter_dir), "adapter_config.json")):
        if not (path / marker).is_file():
            raise ConfigError(f"{path} has no {marker}: expected a LoRA stage's base_model/ and final/ dirs.")
    unset_hf_deepspeed_config()  # a ZeRO-3 run's config must not turn loading into zero.Init
    base = VitSplitLlavaForConditionalGeneration.from_pretrained(model_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def merge_lora_dirs(model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """`merge_lora`, saved with the base model's processor: a complete Hugging Face model directory."""
    merge_lora(model_dir, adapter_dir).save_pretrained(out_dir)
    VitSplitLlavaProcessor.from_pretrained(model_dir).save_pretrained(out_dir)
    return Path(out_dir)
