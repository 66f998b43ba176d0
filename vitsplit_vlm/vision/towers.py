"""One interface over the vision towers ViT-Split supports.

Hugging Face's DINOv2, CLIP and SigLIP vision models differ in where the embedding norm sits, whether the last
hidden state is normalised and how many non-patch tokens lead the sequence. ViT-Split needs to run their blocks one
by one, so these differences are captured once here instead of being special-cased through the split module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

# model_type of the vision config -> family name. Composite configs (CLIPConfig, SiglipConfig) are unwrapped.
SUPPORTED_FAMILIES = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
    "clip_vision_model": "clip",
    "siglip_vision_model": "siglip",
}
# Families whose checkpoints come at a native size that is not a multiple of the patch (SigLIP so400m/14 at 384 px):
# their patch conv drops the partial last row / column of patches, and the position embeddings were learnt on that
# floored grid (27 x 27 at 384 px), so the split follows the tower. The other families' native sizes are whole
# patches; at other sizes the split centre-pads to whole patches so no border pixel is lost (dense tasks).
FLOOR_GRID_FAMILIES = {"siglip"}


@dataclass
class TowerParts:
    """The pieces of a tower that the split module drives directly."""

    embed: nn.Module  # pixel_values -> token sequence entering block 0
    blocks: nn.ModuleList
    feature_norm: nn.Module  # the norm the tower applies to its own output features (Identity for CLIP)
    num_prefix_tokens: int  # CLS + register tokens, dropped from the visual features
    patch_size: int
    hidden_size: int
    image_size: int
    floor_grid: bool  # True: partial patches are dropped, as the tower does; False: the input is padded to whole patches


def floors_patch_grid(config: PretrainedConfig) -> bool:
    """Whether the split (and the processor's token count) drops partial patches for this tower, as the tower does."""
    return SUPPORTED_FAMILIES[vision_config_of(config).model_type] in FLOOR_GRID_FAMILIES


def patch_grid(height: int, width: int, patch_size: int, floor: bool) -> tuple[int, int]:
    """Patch rows x columns for an image: floored (partial patches dropped) or rounded up (padded to whole ones)."""
    if floor:
        return height // patch_size, width // patch_size
    return -(-height // patch_size), -(-width // patch_size)


def vision_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """Unwrap a composite CLIP/SigLIP config to its vision config and reject unsupported towers."""
    if config.model_type in ("clip", "siglip"):
        config = config.vision_config
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"Unsupported vision tower type '{config.model_type}'. "
            f"Supported: {', '.join(sorted(SUPPORTED_FAMILIES))} (DINOv2, DINOv2 with registers, CLIP, SigLIP)."
        )
    return config


def build_tower(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised tower from its config (its weights come later from a checkpoint)."""
    return AutoModel.from_config(vision_config_of(config))


def load_tower(path: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a vision tower saved with `save_pretrained` (e.g. facebook/dinov2-large downloaded by hand).

    A full CLIP/SigLIP checkpoint (text + vision) loads as its vision model only.
    """
    config = vision_config_of(AutoConfig.from_pretrained(path))
    return AutoModel.from_pretrained(path, config=config, dtype=dtype)


class _ClipEmbed(nn.Module):
    """CLIP applies `pre_layrnorm` to the embeddings before block 0; both stay frozen."""

    def __init__(self, embeddings: nn.Module, pre_norm: nn.Module):
        super().__init__()
        self.embeddings, self.pre_norm = embeddings, pre_norm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pre_norm(_embed_with_interpolation(self.embeddings, pixel_values))


class _PlainEmbed(nn.Module):
    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _embed_with_interpolation(self.embeddings, pixel_values)


def _embed_with_interpolation(embeddings: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    # DINOv2 always interpolates its position embeddings; CLIP and SigLIP only when asked, and refuse other sizes.
    if hasattr(embeddings, "image_size"):
        size = embeddings.image_size
        needs = tuple(pixel_values.shape[-2:]) != (size, size)
        return embeddings(pixel_values, interpolate_pos_encoding=needs)
    return embeddings(pixel_values)


def tower_parts(tower: PreTrainedModel) -> TowerParts:
    config = vision_config_of(tower.config)
    family = SUPPORTED_FAMILIES[config.model_type]
    if family == "dinov2":
        embed: nn.Module = _PlainEmbed(tower.embeddings)
        blocks, norm = tower.encoder.layer, tower.layernorm
        prefix = 1 + getattr(config, "num_register_tokens", 0)
    elif family == "clip":
        embed = _ClipEmbed(tower.embeddings, tower.pre_layrnorm)
        # CLIP's post_layernorm only feeds the pooled CLS output; patch features (what LLaVA uses) are un-normed.
        blocks, norm, prefix = tower.encoder.layers, nn.Identity(), 1
    else:  # siglip
        embed = _PlainEmbed(tower.embeddings)
        blocks, norm, prefix = tower.encoder.layers, tower.post_layernorm, 0
    return TowerParts(
        embed=embed,
        blocks=blocks,
        feature_norm=norm,
        num_prefix_tokens=prefix,
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        image_size=config.image_size,
        floor_grid=family in FLOOR_GRID_FAMILIES,
    )


def run_block(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Run one HF encoder layer; older releases return a tuple, 5.x a tensor."""
    out = block(hidden, None)
    return out[0] if isinstance(out, tuple) else out
