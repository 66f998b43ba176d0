"""Monocular depth: the paper's depth head (log-depth, bin-free), SILog loss, the standard depth errors."""
from __future__ import annotations

import torch

from ..data import NYUDepthDataset
from ..heads import DepthHead
from ..metrics import DepthMetric
from ..transforms import DepthPipeline
from .base import DenseTask, register_task


def silog_loss(log_pred: torch.Tensor, target: torch.Tensor, lam: float = 0.85, weight: float = 10.0) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al.) over valid pixels (target > 0) of the whole batch.

    weight * sqrt(mean(g^2) - lam * mean(g)^2), g = log_pred - log(target). A batch without valid pixels gives 0.
    """
    valid = target > 0
    g = log_pred[valid] - torch.log(target[valid])
    if g.numel() == 0:
        return log_pred.sum() * 0.0
    return weight * torch.sqrt((g.square().mean() - lam * g.mean().square()).clamp_min(1e-12))


class DepthTask(DenseTask):
    name = "depth"
    formats = ("nyu",)
    synthetic_layout = "nyu"

    def build_head(self, config, channels):
        return DepthHead(channels, config.init_depth)

    def outputs(self, head_map, labels, config):
        loss = None
        if labels is not None:
            target = labels.view_as(head_map).to(head_map.dtype)
            loss = silog_loss(head_map, target, config.silog_lambda, config.silog_weight)
        return loss, head_map.exp().clamp(config.min_depth, config.max_depth)

    def metric(self, config):
        return DepthMetric(config.min_depth, config.max_depth)

    def prediction(self, output):
        return output[:, 0]

    def datasets(self, root, data, config):
        def split(name: str, train: bool, list_file: str | None) -> NYUDepthDataset:
            pipeline = DepthPipeline(data, config.image_mean, config.image_std, train)
            return NYUDepthDataset(root, name, pipeline, data.depth_scale, list_file)

        return split("train", True, data.train_list), split("val", False, data.val_list)


register_task(DepthTask())
