"""The ViT-Split vision module: a frozen tower, a trainable task head, a trainable prior head, and their fusion.

Data path (L' = blocks up to `feature_layer`, K_t = `task_layers`):

    pixels -> [frozen embed + blocks 0..L'-K_t-1, no autograd] -> h_split --detach--> [task head: copies of the
    last K_t blocks + norm] -> task map
    frozen hidden states at `prior_layers` -> frozen norm -> concat -> [prior head: 1x1 conv, 3x3 conv] -> prior map
    concat(prior map, task map) -> [fusion: 1x1 conv, 3x3 conv] -> fused map (patch stride) -> tokens / pyramid

With `use_split=False` the module is plain LLaVA's vision side: the frozen tower's feature layer, prefix tokens
dropped, nothing trainable.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..zero3 import any_partitioned, copy_module_weights
from .deform import DeformConv3x3
from .towers import TowerParts, patch_grid, run_block, tower_parts


@dataclass
class ViTSplitConfig:
    """Where to split the tower and how wide the trainable heads are.

    Layer indices are 0-based block indices; negative ones count from the end of the full tower (-1 = last block,
    -2 = penultimate, as LLaVA's `vision_feature_layer`).
    """

    task_layers: int = 3  # K_t: trailing blocks (of the tower truncated at feature_layer) copied into the task head
    prior_layers: list[int] = field(default_factory=lambda: [2, 5, 8, 11])  # frozen blocks read by the prior head
    feature_layer: int = -1  # the tower's "own final features": blocks after it are never run
    fusion_dim: int | None = None  # channels of the fused map; None = the tower's hidden size (the paper's choice)
    use_split: bool = True  # False = plain LLaVA vision features (baseline)
    # The paper's dense heads use a deformable 3x3 conv in the prior head and fusion net; the official LLaVA variant
    # a plain one. Checkpoints of one variant do not load into the other.
    deformable: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class ViTSplitOutput(NamedTuple):
    tokens: torch.Tensor  # B x (h*w) x C, row-major over the patch grid: what the VLM projector consumes
    feature_map: torch.Tensor  # B x C x h x w
    task_map: torch.Tensor | None  # B x D x h x w (None in baseline mode)
    prior_map: torch.Tensor | None


def _conv_block(in_ch: int, out_ch: int, deformable: bool) -> nn.Sequential:
    """1x1 conv to mix channels, then a 3x3 conv for local context; GELU after each (the paper's head shape).

    The 3x3 conv is deformable (DCNv1, as the paper's dense heads) or plain (as the official LLaVA variant).
    """
    local = DeformConv3x3(out_ch, out_ch) if deformable else nn.Conv2d(out_ch, out_ch, 3, padding=1)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.GELU(), local, nn.GELU())


def _resolve_layer(index: int, depth: int, what: str) -> int:
    resolved = index + depth if index < 0 else index
    if not 0 <= resolved < depth:
        raise ValueError(f"{what} {index} is out of range for a tower with {depth} blocks (valid: {-depth}..{depth - 1}).")
    return resolved


def uniform_prior_layers(num_blocks: int, count: int, start: int = 2) -> list[int]:
    """The paper's prior-layer sampling: start + floor(i * gap), gap = (L-1-start)/(K_p-1)."""
    if count == 1:
        return [num_blocks - 1]
    gap = (num_blocks - 1 - start) / (count - 1)
    return [start + int(i * gap) for i in range(count)]


def _fresh_like(module: nn.Module, config: PretrainedConfig) -> nn.Module:
    """A new module of the same kind as a tower block or norm (HF encoder layers take the tower config)."""
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(module.normalized_shape, eps=module.eps, elementwise_affine=module.elementwise_affine,
                            bias=module.bias is not None)
    if isinstance(module, nn.Identity):
        return nn.Identity()
    return type(module)(config)


class ViTSplit(nn.Module):
    """Frozen tower + task head + prior head + fusion. Build it with `ViTSplit(tower, ViTSplitConfig(...))`."""

    def __init__(self, tower: PreTrainedModel, config: ViTSplitConfig):
        super().__init__()
        self.config = config
        self.tower = tower
        self.parts: TowerParts = tower_parts(tower)
        depth = len(self.parts.blocks)
        self.feature_layer = _resolve_layer(config.feature_layer, depth, "feature_layer")
        self.num_blocks = self.feature_layer + 1  # blocks that ever run
        tower.requires_grad_(False)
        tower.eval()
        hidden = self.parts.hidden_size
        self.out_channels = hidden if not config.use_split else (config.fusion_dim or hidden)
        if not config.use_split:
            self.task_blocks = self.task_norm = self.prior_head = self.fusion = None
            self.prior_indices: list[int] = []
            self.split_index = self.num_blocks
            return
        if not 1 <= config.task_layers <= self.num_blocks:
            raise ValueError(
                f"task_layers={config.task_layers} must be between 1 and the {self.num_blocks} blocks up to "
                f"feature_layer={config.feature_layer}; lower task_layers or raise feature_layer."
            )
        if not config.prior_layers:
            raise ValueError("prior_layers is empty: give at least one frozen block index for the prior head.")
        self.prior_indices = [_resolve_layer(i, depth, "prior layer") for i in config.prior_layers]
        if max(self.prior_indices) > self.feature_layer:
            raise ValueError(
                f"prior layer {max(self.prior_indices)} lies after feature_layer={self.feature_layer}; "
                "prior layers must be at or before the feature layer."
            )
        self.split_index = self.num_blocks - config.task_layers  # first block replaced by the task head
        # A tower partitioned by ZeRO-3 (zero.Init) cannot be deep-copied: its blocks are built anew (partitioned in
        # turn) and `init_task_head_from_tower` fills them; otherwise the copy is exact from the start.
        clone = _fresh_like if any_partitioned(tower) else (lambda module, _: copy.deepcopy(module))
        self.task_blocks = nn.ModuleList(
            clone(self.parts.blocks[i], tower.config) for i in range(self.split_index, self.num_blocks)
        )
        # A trainable copy of the tower's own output norm (Identity for CLIP, whose patch features are un-normed).
        self.task_norm = clone(self.parts.feature_norm, tower.config)
        self.prior_head = _conv_block(len(self.prior_indices) * hidden, hidden, config.deformable)
        self.fusion = _conv_block(2 * hidden, self.out_channels, config.deformable)
        self.task_blocks.requires_grad_(True)
        self.task_norm.requires_grad_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Refuse weights of the other 3x3-conv variant, even under strict=False (which would skip them silently)."""
        head = [k for k in state_dict if k.startswith(f"{prefix}prior_head.")]
        if head and self.prior_head is not None:
            saved = any(k.startswith(f"{prefix}prior_head.2.offset.") for k in head)
            if saved != self.config.deformable:
                kind = {True: "deformable", False: "plain"}
                raise ValueError(
                    f"These weights hold the {kind[saved]} 3x3 prior/fusion conv but the split config asks for the "
                    f"{kind[self.config.deformable]} one; set the split option deformable={str(saved).lower()} "
                    "to load them."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_task_head_from_tower(self) -> None:
        """Re-copy the task head from the tower, after the tower's weights were loaded into an existing module."""
        if self.task_blocks is None:
            return
        for offset, block in enumerate(self.task_blocks):
            copy_module_weights(block, self.parts.blocks[self.split_index + offset])
        copy_module_weights(self.task_norm, self.parts.feature_norm)

    def train(self, mode: bool = True) -> "ViTSplit":
        super().train(mode)
        self.tower.eval()  # frozen: dropout / drop-path stay off whatever the trainer does
        return self

    @property
    def patch_size(self) -> int:
        return self.parts.patch_size

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid for an input of this size: the tower's own (floored) grid for SigLIP, else whole patches
        after centre padding (see `towers.FLOOR_GRID_FAMILIES`)."""
        return patch_grid(height, width, self.parts.patch_size, self.parts.floor_grid)

    def num_tokens(self, height: int | None = None, width: int | None = None) -> int:
        h, w = self.grid_size(height or self.parts.image_size, width or self.parts.image_size)
        return h * w

    def _pad_to_patch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Centre-pad to a multiple of the patch size, so no border pixels are dropped by the patch conv (not for a
        tower that floors its grid: its patch conv drops the partial patches itself)."""
        p = self.parts.patch_size
        if self.parts.floor_grid:
            return pixel_values
        height, width = pixel_values.shape[-2:]
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h == pad_w == 0:
            return pixel_values
        return F.pad(pixel_values, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, self.parts.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[-1], *grid)

    @torch.no_grad()
    def frozen_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the frozen tower up to the split point; return the split input and the raw prior hidden states."""
        hidden = self.parts.embed(pixel_values)
        wanted = set(self.prior_indices)
        last_needed = max([self.split_index - 1, *self.prior_indices])
        saved: dict[int, torch.Tensor] = {}
        split_input = hidden if self.split_index == 0 else None
        for index in range(last_needed + 1):
            hidden = run_block(self.parts.blocks[index], hidden)
            if index in wanted:
                saved[index] = hidden
            if index == self.split_index - 1:
                split_input = hidden
        return split_input, saved

    def forward(self, pixel_values: torch.Tensor) -> ViTSplitOutput:
        pixel_values = self._pad_to_patch(pixel_values.to(self.tower.dtype))
        grid = self.grid_size(*pixel_values.shape[-2:])
        split_input, priors = self.frozen_features(pixel_values)
        if not self.config.use_split:
            feature_map = self._to_map(self.parts.feature_norm(split_input), grid)
            return ViTSplitOutput(feature_map.flatten(2).transpose(1, 2), feature_map, None, None)
        with torch.no_grad():
            prior_in = torch.cat([self._to_map(self.parts.feature_norm(priors[i]), grid) for i in self.prior_indices], 1)
        hidden = split_input.detach()
        for block in self.task_blocks:
            hidden = run_block(block, hidden)
        task_map = self._to_map(self.task_norm(hidden), grid)
        prior_map = self.prior_head(prior_in)
        feature_map = self.fusion(torch.cat([prior_map, task_map], dim=1))
        return ViTSplitOutput(feature_map.flatten(2).transpose(1, 2), feature_map, task_map, prior_map)


class FeaturePyramid(nn.Module):
    """Four levels at 1/4, 1/2, 1 and 2 times the patch stride, built after fusion as in the paper's dense heads.

    With a 14 px patch the strides are 3.5/7/14/28 px (the detection variant re-patchifies at 16 to get 4/8/16/32).
    """

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        groups = math.gcd(groups, channels)

        def up() -> list[nn.Module]:
            return [nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.GroupNorm(groups, channels), nn.GELU()]

        self.levels = nn.ModuleList(
            [nn.Sequential(*up(), *up()), nn.Sequential(*up()), nn.Identity(), nn.MaxPool2d(2)]
        )

    def forward(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        return [level(feature_map) for level in self.levels]
