"""Dense metrics, accumulated image by image over a dataset.

Segmentation follows mmseg: one confusion matrix over all pixels of the dataset (ignore_index excluded); IoU of a
class absent from both prediction and ground truth is NaN and left out of the mean. Depth follows the
Monocular-Depth-Estimation-Toolbox the paper used: metrics per image over its valid pixels, averaged over images.
"""
from __future__ import annotations

import math

import torch


class SegmentationMetric:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # rows: ground truth

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer class maps of the same shape (any batch layout)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
        keep = target != self.ignore_index
        target, pred = target[keep].long(), pred[keep].long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(
                f"target holds class {int(target.max())} outside 0..{self.num_classes - 1} "
                f"(ignore_index={self.ignore_index}); check num_classes and the label mapping."
            )
        k = self.num_classes
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).cpu()

    def compute(self) -> dict[str, float | list[float]]:
        conf = self.confusion.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        gt = conf.sum(1)
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), torch.full_like(tp, math.nan))
        return {
            "mIoU": float(iou.nanmean()),
            "mAcc": float(acc.nanmean()),
            "aAcc": float(tp.sum() / conf.sum().clamp_min(1)),
            "IoU": iou.tolist(),
        }


DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The standard monocular-depth errors over matching 1-D tensors of valid, positive depths."""
    pred, target = pred.double(), target.double()
    ratio = torch.maximum(pred / target, target / pred)
    diff = pred - target
    return {
        "abs_rel": float((diff.abs() / target).mean()),
        "sq_rel": float((diff.square() / target).mean()),
        "rmse": float(diff.square().mean().sqrt()),
        "rmse_log": float((pred.log() - target.log()).square().mean().sqrt()),
        "log10": float((pred.log10() - target.log10()).abs().mean()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
    }


class DepthMetric:
    """Valid pixels: min_depth < target <= max_depth (0 marks missing depth). Predictions are clamped to the range."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0):
        self.min_depth, self.max_depth = min_depth, max_depth
        self.sums = dict.fromkeys(DEPTH_METRICS, 0.0)
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: B x H x W or B x 1 x H x W depth in metres; each image counts once."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
        for p, t in zip(pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)):
            valid = (t > self.min_depth) & (t <= self.max_depth)
            if not valid.any():
                continue
            errors = depth_errors(p[valid].clamp(self.min_depth, self.max_depth), t[valid])
            for name, value in errors.items():
                self.sums[name] += value
            self.count += 1

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("No image with valid depth was seen; cannot compute depth metrics.")
        return {name: total / self.count for name, total in self.sums.items()}
