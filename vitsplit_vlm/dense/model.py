"""`DenseSplitModel`: a ViT-Split module plus one dense head, trainable directly by the Hugging Face Trainer.

Checkpoints are a directory with `config.json` (`vision_config`, `split`, `dense`) and `model.safetensors`. The
first two keys are the ones the VLM's config.json carries, so the same reader builds the split module from either
checkpoint: that is how one split module serves both the VLM and the dense tasks (`load_split_from_vlm`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig
from transformers.utils import ModelOutput

from ..atomic import atomic_write_json, save_safetensors_atomic
from ..vision import ViTSplit, ViTSplitConfig, build_tower, load_tower
from .config import DenseModelConfig
from .tasks import get_task

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class DenseOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # seg: B x C x H x W class scores; depth: B x 1 x H x W depth in metres


class DenseSplitModel(nn.Module):
    """ViT-Split (frozen tower, trainable task/prior heads and fusion) + a segmentation or depth head.

    Input: normalised pixel_values of any size (padded to whole patches inside the split module); output maps are
    at the input resolution.
    """

    def __init__(self, split: ViTSplit, config: DenseModelConfig):
        super().__init__()
        self.split = split
        self.config = replace(config)
        # Not a config field: the Trainer's DeepSpeed integration sizes ZeRO's "auto" buckets from it.
        self.config.hidden_size = split.out_channels
        self.task = get_task(config.task)
        self.head = self.task.build_head(self.config, split.out_channels)

    @classmethod
    def from_tower(cls, tower_path: str | Path, split_config: ViTSplitConfig, config: DenseModelConfig) -> "DenseSplitModel":
        return cls(ViTSplit(load_tower(tower_path), split_config), config)

    def task_head_parameters(self) -> list[nn.Parameter]:
        """The split module's task head (copied tower blocks + norm): trained at lr x lr_mult in the paper."""
        if self.split.task_blocks is None:
            return []
        return [*self.split.task_blocks.parameters(), *self.split.task_norm.parameters()]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> DenseOutput:
        size = tuple(pixel_values.shape[-2:])
        if labels is not None and tuple(labels.shape[-2:]) != size:
            raise ValueError(f"labels are {tuple(labels.shape[-2:])} but pixel_values are {size}; they must match.")
        head_map = self._to_input_frame(self.head(self.split(pixel_values).feature_map), size)
        loss, out = self.task.outputs(head_map, labels, self.config)
        return DenseOutput(loss=loss, logits=out)

    def _to_input_frame(self, head_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize the head map to the pixels its patch grid covers, then back to the input frame: crop the centre
        padding the split module added, or (a tower that drops partial patches) extend the last row / column over
        the bottom / right pixels the patch conv left out."""
        p = self.split.patch_size
        grid_h, grid_w = self.split.grid_size(*size)
        padded = F.interpolate(head_map, size=(grid_h * p, grid_w * p), mode="bilinear", align_corners=False)
        if self.split.parts.floor_grid:
            return F.pad(padded, (0, size[1] - grid_w * p, 0, size[0] - grid_h * p), mode="replicate")
        top, left = (grid_h * p - size[0]) // 2, (grid_w * p - size[1]) // 2  # as ViTSplit._pad_to_patch
        return padded[..., top : top + size[0], left : left + size[1]]

    def save_pretrained(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "vision_config": self.split.tower.config.to_dict(),
            "split": self.split.config.to_dict(),
            "dense": asdict(self.config),
        }
        atomic_write_json(out_dir / CONFIG_NAME, config, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors_atomic(state, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "DenseSplitModel":
        config = _read_config(model_dir)
        if "dense" not in config:
            raise ValueError(f"{Path(model_dir) / CONFIG_NAME} has no 'dense' section: not a DenseSplitModel checkpoint.")
        model = cls(_build_split(config, model_dir), DenseModelConfig(**config["dense"]))
        model.load_state_dict(_read_weights(model_dir, prefix=""))
        return model.eval()


def load_split_from_vlm(vlm_dir: str | Path) -> ViTSplit:
    """The VLM's split module (tower included) from its config.json and the `vision.*` weights of its safetensors."""
    split = _build_split(_read_config(vlm_dir), vlm_dir)
    split.load_state_dict(_read_weights(vlm_dir, prefix="vision."))
    return split


def _read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a checkpoint directory written by save_pretrained.")
    return json.loads(path.read_text())


def _build_split(config: dict, model_dir: str | Path) -> ViTSplit:
    """A split module with random weights, shaped by the checkpoint's `vision_config` and `split` sections."""
    missing = [key for key in ("vision_config", "split") if key not in config]
    if missing:
        raise ValueError(f"{Path(model_dir) / CONFIG_NAME} lacks {missing}: it does not describe a ViT-Split module.")
    vision = dict(config["vision_config"])
    tower = build_tower(AutoConfig.for_model(vision.pop("model_type"), **vision))
    return ViTSplit(tower, ViTSplitConfig(**config["split"]))


def _read_weights(model_dir: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with `prefix` (prefix stripped), from a single or sharded safetensors checkpoint.

    Only the matching tensors are read, so pulling the vision module out of a 7B VLM does not load the LLM.
    """
    model_dir = Path(model_dir)
    index = model_dir / WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / WEIGHTS_NAME).is_file():
        shards = [WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"No {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {model_dir}.")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(model_dir / shard), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix) :]] = f.get_tensor(key)
    if not state:
        raise ValueError(f"No '{prefix}*' weights in {model_dir}: is this a ViT-Split checkpoint?")
    return state
