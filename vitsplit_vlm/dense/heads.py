"""Dense decode heads over the split module's fused map (B x D x h x w, patch stride).

Each head returns a map at 4x the patch resolution (stride 3.5 px for a 14 px patch); `DenseSplitModel` resizes
it to the label size, as mmseg does with the paper's heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..vision import FeaturePyramid


def _up2(in_ch: int, out_ch: int) -> list[nn.Module]:
    """One 2x learned upsampling step: the paper's ConvTranspose2d(k=2, s=2) + GroupNorm(32) + GELU."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2), nn.GroupNorm(math.gcd(32, out_ch), out_ch), nn.GELU()]


class LinearSegHead(nn.Module):
    """The paper's main ADE20K head: two 2x deconvs (4x up), BatchNorm, then a per-pixel linear classifier."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.up = nn.Sequential(*_up2(channels, channels), *_up2(channels, channels))
        self.norm = nn.BatchNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.up(feature_map)))


class MultiScaleSegHead(nn.Module):
    """A light FPN-style head over the paper's 4-level pyramid (1/4, 1/2, 1, 2 x the patch stride).

    Each level is projected to a common width, resized to the finest level and summed; a 3x3 conv then mixes
    neighbouring pixels before the classifier. Cheaper than UperNet, but it sees the coarse (2x stride) context.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 128):
        super().__init__()
        self.pyramid = FeaturePyramid(channels)
        self.lateral = nn.ModuleList(nn.Conv2d(channels, width, 1) for _ in self.pyramid.levels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        levels = self.pyramid(feature_map)
        size = levels[0].shape[-2:]
        summed = sum(
            F.interpolate(lateral(level), size=size, mode="bilinear", align_corners=False)
            for lateral, level in zip(self.lateral, levels)
        )
        return self.classifier(self.fuse(summed))


class DepthHead(nn.Module):
    """The paper's NYU head (D -> D/2 -> 64 channels over two 2x deconvs, BatchNorm, 3x3 conv), bin-free.

    It predicts log-depth rather than the paper's ReLU(x) + min_depth: SILog works in log space anyway, and the
    exponential keeps depth positive without a dead ReLU region. `init_depth` sets the initial prediction.
    """

    def __init__(self, channels: int, init_depth: float = 1.0):
        super().__init__()
        mid = max(channels // 2, 1)
        self.up = nn.Sequential(*_up2(channels, mid), *_up2(mid, 64))
        self.norm = nn.BatchNorm2d(64)
        self.out = nn.Conv2d(64, 1, 3, padding=1)
        nn.init.constant_(self.out.bias, math.log(init_depth))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.up(feature_map)))
