"""A deformable 3x3 convolution (DCNv1) in pure PyTorch, for the paper's prior head and fusion net.

The official dense code uses mmcv's `DeformConv2d` (no bias, no modulation mask), with the offsets predicted by a
plain 3x3 conv. Semantics follow `torchvision.ops.deform_conv2d` (torchvision 0.2x): offset channel 2k is the row
shift and 2k+1 the column shift of kernel tap k (row-major over the 3x3 taps); samples are bilinear, and a sample's
neighbours that fall outside the image count as zero. torchvision's compiled op is used when it imports beside the
installed torch; otherwise every tap is sampled with `grid_sample`, which computes the same interpolation.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _torchvision_deform_conv2d():
    """torchvision's op if torchvision imports and its compiled ops match this torch, else None."""
    try:
        from torchvision.ops import deform_conv2d
    except Exception:  # missing, or built for another torch ("operator torchvision::nms does not exist")
        return None
    return deform_conv2d


def deform_conv2d_reference(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
    padding: int = 1, dilation: int = 1,
) -> torch.Tensor:
    """Stride-1 DCNv1 with one offset group: x B x C x H x W, offset B x 2*kh*kw x H' x W', weight O x C x kh x kw."""
    batch, _, height, width = x.shape
    kh, kw = weight.shape[-2:]
    out_h, out_w = offset.shape[-2:]
    if offset.shape[1] != 2 * kh * kw:
        raise ValueError(f"offset has {offset.shape[1]} channels; a {kh}x{kw} kernel needs {2 * kh * kw}.")
    rows = torch.arange(out_h, device=x.device, dtype=x.dtype).view(1, 1, out_h, 1) - padding
    cols = torch.arange(out_w, device=x.device, dtype=x.dtype).view(1, 1, 1, out_w) - padding
    taps_y = (torch.arange(kh, device=x.device, dtype=x.dtype) * dilation).repeat_interleave(kw).view(1, -1, 1, 1)
    taps_x = (torch.arange(kw, device=x.device, dtype=x.dtype) * dilation).repeat(kh).view(1, -1, 1, 1)
    y = rows + taps_y + offset[:, 0::2]  # B x K x H' x W', pixel coordinates of every tap's sample
    x_pos = cols + taps_x + offset[:, 1::2]
    # grid_sample with align_corners=False puts pixel centre i at (2i + 1) / size - 1; zero padding drops the
    # out-of-image neighbours exactly as DCN does.
    grid = torch.stack([(2 * x_pos + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    taps = grid.shape[1]
    sampled = F.grid_sample(
        x, grid.reshape(batch, taps * out_h, out_w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    ).view(batch, x.shape[1], taps, out_h, out_w)
    out = torch.einsum("bckhw,ock->bohw", sampled, weight.flatten(2))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv2d(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1
) -> torch.Tensor:
    """torchvision's compiled op where available, else the grid_sample form (same result)."""
    compiled = _torchvision_deform_conv2d()
    if compiled is not None:
        return compiled(x, offset, weight, bias, padding=(padding, padding))
    return deform_conv2d_reference(x, offset, weight, bias, padding)


class DeformConv3x3(nn.Module):
    """3x3 deformable conv, no bias (mmcv `DeformConv2d` as the paper configures it); offsets from a plain 3x3 conv.

    The offset conv starts at zero, so at initialisation the layer is exactly a plain 3x3 conv with `weight`.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.offset(x), self.weight)
