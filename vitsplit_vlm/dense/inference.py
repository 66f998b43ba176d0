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


def _single_view(model: DenseSplitModel, pixel_values: torch.Tensor, crop_size: int | None, stride: int | None):
    if crop_size is None:
        return model(pixel_values).logits
    return sliding_window(lambda x: model(x).logits, pixel_values, crop_size, stride or crop_size)


@torch.no_grad()
def predict(
    model: DenseSplitModel, pixel_values: torch.Tensor, crop_size: int | None = None, stride: int | None = None,
    flip: bool = False, scales: list[float] | None = None,
) -> torch.Tensor:
    """The model's output map (seg logits / depth) for a batch; sliding windows when crop_size is given.

    With `flip` or several `scales` (ratios of the input size), mmseg's test-time augmentation: each view's output
    is resized back to the input size and the task's TTA form (seg: softmax probabilities) is averaged.
    """
    model.eval()
    pixel_values = pixel_values.to(next(model.parameters()).device)
    scales = list(scales or [1.0])
    if not flip and scales == [1.0]:
        return _single_view(model, pixel_values, crop_size, stride)
    size = pixel_values.shape[-2:]
    total = 0.0
    for scale in scales:
        scaled = pixel_values if scale == 1.0 else F.interpolate(
            pixel_values, size=[max(1, round(s * scale)) for s in size], mode="bilinear", align_corners=False
        )
        for flipped in ((False, True) if flip else (False,)):
            view = _single_view(model, scaled.flip(-1) if flipped else scaled, crop_size, stride)
            view = view.flip(-1) if flipped else view
            if view.shape[-2:] != size:
                view = F.interpolate(view, size=size, mode="bilinear", align_corners=False)
            total = total + model.task.tta_form(view)
    return total / (len(scales) * (2 if flip else 1))


def evaluate(
    model: DenseSplitModel, dataset: Dataset, crop_size: int | None = None, stride: int | None = None,
    progress: bool = False, flip: bool = False, scales: list[float] | None = None,
) -> dict[str, float | list[float]]:
    """The task's metrics over a dataset (seg: mIoU / accuracies; depth: the standard errors), one image at a time.

    Predictions are resized bilinearly to the label size, which may differ from the input when images were resized.
    """
    metric = model.task.metric(model.config)
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        item = dataset[index]
        labels = item["labels"][None]
        out = predict(model, item["pixel_values"][None], crop_size, stride, flip, scales).float().cpu()
        if out.shape[-2:] != labels.shape[-2:]:
            out = F.interpolate(out, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(model.task.prediction(out), labels)
    return metric.compute()
