"""The stage-1 -> stage-2 hand-off: the trained non-LM weights (projector + heads) alone, in safetensors.

Stage 1 trains a few million parameters next to a multi-GB frozen LM; saving only those keeps its output small and
lets stage 2 (a fresh process, possibly another DeepSpeed stage) start from it. Loading checks every key and shape
first, so a file from another split / projector / tower is refused by name instead of half-loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..zero3 import full_shape, gathered, is_partitioned, rank

STAGE1_WEIGHTS = "non_lm_trainables.safetensors"
FINAL_DIR = "final"  # a stage that trains the LM: the HF-format model, or the LoRA adapter
BASE_DIR = "base_model"  # a LoRA stage: the model the adapter was trained on (what merge_lora.py merges into)
LM_PREFIX = "language_model."


class IncompatibleCheckpointError(ValueError):
    """A stage-1 file whose keys or shapes do not fit the model being trained."""


def non_lm_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the language model, gathered to full tensors on CPU (collective under ZeRO-3)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith(LM_PREFIX)]
    with gathered([p for _, p in named]):
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write to a temp file in the same directory, then rename: a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def stage1_weights_path(path: str | Path) -> Path:
    """A stage-1 output dir or the weights file itself."""
    path = Path(path)
    return path / STAGE1_WEIGHTS if path.is_dir() else path


def load_stage1_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a stage-1 file into `model` after checking that every key exists with the same shape; returns the keys."""
    file = stage1_weights_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"stage-1 weights {file} not found; stage 1 writes {STAGE1_WEIGHTS} into its output dir.")
    state = load_file(str(file))
    own = dict(model.named_parameters())  # full shapes even when ZeRO-3 partitioned them
    unknown = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k} (file {tuple(v.shape)} vs model {full_shape(own[k])})" for k, v in state.items()
        if k in own and tuple(v.shape) != full_shape(own[k])
    )
    lm_keys = sorted(k for k in state if k.startswith(LM_PREFIX))
    if unknown or mismatched or lm_keys or not state:
        problems = []
        if not state:
            problems.append("it holds no tensors")
        if unknown:
            problems.append(f"keys the model does not have: {', '.join(unknown)}")
        if mismatched:
            problems.append(f"shape mismatches: {', '.join(mismatched)}")
        if lm_keys:
            problems.append(f"language-model keys (a stage-1 file holds only projector/heads): {', '.join(lm_keys)}")
        raise IncompatibleCheckpointError(
            f"stage-1 weights {file} do not fit this model ({'; '.join(problems)}). Was it trained with another "
            "vision tower, split preset, projector type or language model?"
        )
    targets = [own[k] for k in state]
    partitioned = any(is_partitioned(p) for p in targets)
    with torch.no_grad(), gathered(targets, modifier_rank=0):  # rank 0 writes, ZeRO-3 re-partitions on exit
        if not partitioned or rank() == 0:
            for key, value in state.items():
                own[key].copy_(value.to(own[key].dtype))
    return sorted(state)
