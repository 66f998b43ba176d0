"""`DenseSplitModel`: a ViT-Split module plus one dense head, trainable directly by the Hugging Face Trainer.

Checkpoints are a directory with `config.json` (`vision_config`, `split`, `dense`) and `model.safetensors`. The
first two keys are the ones the VLM's config.json carries, so the same reader builds the split module from either
checkpoint: that is how one split module serves both the VLM and the dense tasks (`load_split_from_vlm`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig
from transformers.utils import ModelOutput

from ..vision import ViTSplit, ViTSplitConfig, build_tower, load_tower
from .heads import build_head

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class DenseModelConfig:
    """What the head predicts and how it is supervised; saved with the checkpoint."""

    task: str = "seg"  # "seg" | "depth"
    head: str = "linear"  # segmentation head: "linear" (the paper's) | "multiscale"
    num_classes: int = 150
    ignore_index: int = 255
    min_depth: float = 1e-3  # predicted depth is clamped to [min_depth, max_depth] (metres)
    max_depth: float = 10.0
    init_depth: float = 1.0  # depth the head predicts at initialisation (metres)
    silog_lambda: float = 0.85  # variance focus of SILog: 1 = fully scale-invariant, 0 = plain log-L2
    silog_weight: float = 10.0  # the paper's loss_weight
    # Input normalisation the model was trained with (the tower's image processor statistics).
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self) -> None:
        if self.task not in ("seg", "depth"):
            raise ValueError(f"Unknown dense task '{self.task}'; choose 'seg' or 'depth'.")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"Need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}.")

    def to_json_string(self) -> str:
        """What the Trainer's TensorBoard callback calls on `model.config`."""
        return json.dumps(asdict(self), indent=2)


@dataclass
class DenseOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # seg: B x C x H x W class scores; depth: B x 1 x H x W depth in metres


def silog_loss(log_pred: torch.Tensor, target: torch.Tensor, lam: float = 0.85, weight: float = 10.0) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al.) over valid pixels (target > 0) of the whole batch.

    weight * sqrt(mean(g^2) - lam * mean(g)^2), g = log_pred - log(target). A batch without valid pixels gives 0.
    """
    valid = target > 0
    g = log_pred[valid] - torch.log(target[valid])
    if g.numel() == 0:
        return log_pred.sum() * 0.0
    return weight * torch.sqrt((g.square().mean() - lam * g.mean().square()).clamp_min(1e-12))


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels; 0 (not NaN) when a batch has none."""
    total = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


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
        self.head = build_head(config.task, config.head, split.out_channels, config.num_classes, config.init_depth)

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
        out = self._to_input_frame(self.head(self.split(pixel_values).feature_map), size)
        cfg = self.config
        if cfg.task == "seg":
            loss = None if labels is None else segmentation_loss(out, labels, cfg.ignore_index)
            return DenseOutput(loss=loss, logits=out)
        depth = out.exp().clamp(cfg.min_depth, cfg.max_depth)
        loss = None
        if labels is not None:
            target = labels.view_as(out).to(out.dtype)
            loss = silog_loss(out, target, cfg.silog_lambda, cfg.silog_weight)
        return DenseOutput(loss=loss, logits=depth)

    def _to_input_frame(self, head_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize the head map to the patch-padded input, then crop the centre padding the split module added."""
        p = self.split.patch_size
        grid_h, grid_w = self.split.grid_size(*size)
        padded = F.interpolate(head_map, size=(grid_h * p, grid_w * p), mode="bilinear", align_corners=False)
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
        _atomic_write(out_dir / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2)))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        _atomic_write(out_dir / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, so a crash never leaves a truncated checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent savers never share a file
    write(tmp)
    os.replace(tmp, path)
