"""Sliding-window inference (mmseg's `slide` mode) and dataset evaluation.

Large images are covered by crop x crop windows every `stride` pixels, the last window of a row/column flush with the
border; overlapping predictions are averaged. The model thus always sees inputs at its training scale.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .metrics import DepthMetric, SegmentationMetric
from .model import DenseSplitModel


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(count)]


def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, crop_size: int, stride: int
) -> torch.Tensor:
    """Average `predict` (B x 3 x h x w -> B x C x h x w) over overlapping windows of a B x 3 x H x W batch."""
    if not 0 < stride <= crop_size:
        raise ValueError(f"stride {stride} must be in 1..crop_size ({crop_size}), or windows would leave gaps.")
    height, width = pixel_values.shape[-2:]
    total = count = None
    for top in _window_starts(height, crop_size, stride):
        for left in _window_starts(width, crop_size, stride):
            window = (..., slice(top, top + crop_size), slice(left, left + crop_size))
            out = predict(pixel_values[window])
            if total is None:
                total = out.new_zeros(*out.shape[:2], height, width)
                count = out.new_zeros(1, 1, height, width)
            total[window] += out
            count[window] += 1
    return total / count


@torch.no_grad()
def predict(
    model: DenseSplitModel, pixel_values: torch.Tensor, crop_size: int | None = None, stride: int | None = None
) -> torch.Tensor:
    """The model's output map (seg logits / depth) for a batch; sliding windows when crop_size is given."""
    model.eval()
    pixel_values = pixel_values.to(next(model.parameters()).device)
    if crop_size is None:
        return model(pixel_values).logits
    return sliding_window(lambda x: model(x).logits, pixel_values, crop_size, stride or crop_size)


def evaluate(
    model: DenseSplitModel, dataset: Dataset, crop_size: int | None = None, stride: int | None = None,
    progress: bool = False,
) -> dict[str, float | list[float]]:
    """mIoU / pixel accuracy (seg) or depth errors over a dataset, one image at a time (sizes may differ).

    Predictions are resized bilinearly to the label size, which may differ from the input when images were resized.
    """
    cfg = model.config
    metric = (
        SegmentationMetric(cfg.num_classes, cfg.ignore_index) if cfg.task == "seg"
        else DepthMetric(cfg.min_depth, cfg.max_depth)
    )
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        item = dataset[index]
        labels = item["labels"][None]
        out = predict(model, item["pixel_values"][None], crop_size, stride).float().cpu()
        if out.shape[-2:] != labels.shape[-2:]:
            out = F.interpolate(out, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(out.argmax(1) if cfg.task == "seg" else out[:, 0], labels)
    return metric.compute()
