"""The paper's split settings by name, so a run config can say `split: dinov2-b` instead of repeating numbers."""
from __future__ import annotations

from .split import ViTSplitConfig, uniform_prior_layers

SPLIT_PRESETS: dict[str, ViTSplitConfig] = {
    # Dense tasks (ADE20K configs of the official code): ViT-S/B have 12 blocks, ViT-L 24.
    "dinov2-s": ViTSplitConfig(task_layers=3, prior_layers=[2, 5, 8, 11]),
    "dinov2-b": ViTSplitConfig(task_layers=3, prior_layers=[2, 5, 8, 11]),
    "dinov2-l": ViTSplitConfig(task_layers=4, prior_layers=uniform_prior_layers(24, 8)),
    # The VLM (LLaVA-1.5 fork): the task head re-computes CLIP's penultimate layer, the prior reads it frozen.
    "clip-l-vlm": ViTSplitConfig(task_layers=1, prior_layers=[-2], feature_layer=-2),
    # Plain LLaVA-1.5 vision features, for baselines.
    "llava-baseline": ViTSplitConfig(feature_layer=-2, use_split=False),
}


def split_preset(name: str) -> ViTSplitConfig:
    if name not in SPLIT_PRESETS:
        raise ValueError(f"Unknown split preset '{name}'. Known presets: {', '.join(sorted(SPLIT_PRESETS))}.")
    preset = SPLIT_PRESETS[name]
    return ViTSplitConfig(**preset.to_dict())
