"""The stage-1 -> stage-2 hand-off: the trained non-LM weights (projector + heads) alone, in safetensors.

Stage 1 trains a few million parameters next to a multi-GB frozen LM; saving only those keeps its output small and
lets stage 2 (a fresh process, possibly another DeepSpeed stage) start from it. Loading checks every key and shape
first, so a file from another split / projector / tower is refused by name instead of half-loaded. The file also
records what it was trained with (tower type and shape, split config, projector, LM width) in its safetensors
metadata: equal shapes do not make a CLIP-trained projector fit a DINOv2 of the same width, so stage 2 compares
that record with its own model and refuses a mismatch.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ..atomic import save_safetensors_atomic
from ..errors import UserError
from ..zero3 import full_shape, gathered, is_partitioned, rank

logger = logging.getLogger(__name__)

STAGE1_WEIGHTS = "non_lm_trainables.safetensors"
FINAL_DIR = "final"  # a stage that trains the LM: the HF-format model, or the LoRA adapter
BASE_DIR = "base_model"  # a LoRA stage: the model the adapter was trained on (what merge_lora.py merges into)
LM_PREFIX = "language_model."
PROVENANCE_KEY = "vitsplit_provenance"  # safetensors metadata entry: JSON of stage1_provenance()
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into checkpoint-N/: its presence marks it complete
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class IncompatibleCheckpointError(UserError):
    """A stage-1 file that is unreadable, or whose keys, shapes or provenance do not fit the model being trained."""


def non_lm_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the language model, gathered to full tensors on CPU (collective under ZeRO-3)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith(LM_PREFIX)]
    with gathered([p for _, p in named]):
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in named}


def stage1_provenance(model: nn.Module) -> dict:
    """What a stage-1 file's weights depend on beyond their shapes, from the model's config (JSON-normalised)."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    record = {
        "vision_model_type": vision.model_type,
        "vision_hidden_size": vision.hidden_size,
        "vision_num_hidden_layers": vision.num_hidden_layers,
        "vision_patch_size": vision.patch_size,
        "vision_image_size": vision.image_size,
        "split": config.split,
        "projector_type": config.projector_type,
        "lm_hidden_size": text.hidden_size,
    }
    return json.loads(json.dumps(record, sort_keys=True))


def save_stage1_weights(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> Path:
    """`state` (from `non_lm_trainable_state`) written atomically, with the model's provenance in the metadata."""
    metadata = {"format": "pt", PROVENANCE_KEY: json.dumps(stage1_provenance(model), sort_keys=True)}
    return save_safetensors_atomic(state, path, metadata=metadata)


def read_stage1_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header's metadata (no tensor is read); a missing or corrupt file is named."""
    file = stage1_weights_path(path)
    if not file.is_file():
        raise IncompatibleCheckpointError(
            f"stage-1 weights {file} not found; stage 1 writes {STAGE1_WEIGHTS} into its output dir.")
    try:
        with safe_open(str(file), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise IncompatibleCheckpointError(
            f"stage-1 weights {file} are not a readable safetensors file ({err}); re-run stage 1 or point "
            "init_from at its output dir.") from None


def stage1_weights_path(path: str | Path) -> Path:
    """A stage-1 output dir or the weights file itself."""
    path = Path(path)
    return path / STAGE1_WEIGHTS if path.is_dir() else path


def load_stage1_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a stage-1 file into `model` after checking that every key exists with the same shape; returns the keys."""
    file = stage1_weights_path(path)
    recorded = read_stage1_metadata(file).get(PROVENANCE_KEY)
    if recorded is None:
        logger.warning("stage-1 weights %s carry no provenance record; only their keys and shapes are checked", file)
    else:
        file_prov, own_prov = json.loads(recorded), stage1_provenance(model)
        differ = [f"{k}: file {file_prov.get(k)!r} vs model {own_prov.get(k)!r}"
                  for k in sorted(set(file_prov) | set(own_prov)) if file_prov.get(k) != own_prov.get(k)]
        if differ:
            raise IncompatibleCheckpointError(
                f"stage-1 weights {file} were trained on another model ({'; '.join(differ)}); use the vision "
                "tower, split and projector stage 1 used, or re-run stage 1.")
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


def latest_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """The newest `checkpoint-N/` holding `trainer_state.json`, and the newer ones without it (a run killed while
    the Trainer was writing them), which resume must skip rather than crash on."""
    output_dir = Path(output_dir)
    found = sorted(
        (int(m.group(1)), path) for path in (output_dir.iterdir() if output_dir.is_dir() else [])
        if path.is_dir() and (m := _CHECKPOINT.match(path.name))
    )
    incomplete = []
    for _, path in reversed(found):
        if (path / TRAINER_STATE).is_file():
            return path, incomplete
        incomplete.append(path)
    return None, incomplete
