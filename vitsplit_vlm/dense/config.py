"""`DenseModelConfig`: what a dense model predicts, from which split, and how it is supervised (saved with it)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DenseModelConfig:
    task: str = "seg"  # a registered dense task (`vitsplit_vlm.dense.tasks.TASKS`): "seg" | "depth"
    # The split, as the VLM configs choose it: a preset of vitsplit_vlm.vision.SPLIT_PRESETS and ViTSplitConfig
    # fields over it. Unset with init_from_vlm (the VLM checkpoint holds its split).
    split: str | None = None
    split_options: dict | None = None
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
        from .tasks import get_task  # the registry imports the task modules, which import this one

        get_task(self.task)
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"Need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}.")

    def to_json_string(self) -> str:
        """What the Trainer's TensorBoard callback calls on `model.config`."""
        return json.dumps(asdict(self), indent=2)
