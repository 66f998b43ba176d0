"""Semantic segmentation: the paper's linear head (or a light multi-scale one), cross-entropy, mIoU (mmseg)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import SYNTHETIC_CLASSES, ADE20KDataset
from ..heads import LinearSegHead, MultiScaleSegHead
from ..metrics import SegmentationMetric
from ..transforms import SegPipeline
from .base import DenseTask, register_task

HEADS = {"linear": LinearSegHead, "multiscale": MultiScaleSegHead}


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels; 0 (not NaN) when a batch has none."""
    total = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


class SegmentationTask(DenseTask):
    name = "seg"
    formats = ("ade20k",)
    synthetic_layout = "ade20k"

    def build_head(self, config, channels):
        if config.head not in HEADS:
            raise ValueError(f"Unknown segmentation head '{config.head}'; choose 'linear' or 'multiscale'.")
        return HEADS[config.head](channels, config.num_classes)

    def outputs(self, head_map, labels, config):
        loss = None if labels is None else segmentation_loss(head_map, labels, config.ignore_index)
        return loss, head_map

    def tta_form(self, output):
        return output.softmax(1)

    def metric(self, config):
        return SegmentationMetric(config.num_classes, config.ignore_index)

    def prediction(self, output):
        return output.argmax(1)

    def datasets(self, root, data, config):
        def split(name: str, train: bool) -> ADE20KDataset:
            pipeline = SegPipeline(data, config.image_mean, config.image_std, config.ignore_index, train)
            return ADE20KDataset(root, name, pipeline, config.num_classes, config.ignore_index)

        return split("train", True), split("val", False)

    def check_synthetic(self, config):
        if config.num_classes != len(SYNTHETIC_CLASSES):
            raise ValueError(
                f"data.format=synthetic has {len(SYNTHETIC_CLASSES)} classes {SYNTHETIC_CLASSES}; "
                f"set model.num_classes={len(SYNTHETIC_CLASSES)} (it is {config.num_classes})."
            )


register_task(SegmentationTask())
