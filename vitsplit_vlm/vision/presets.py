"""The paper's split settings by name, and the one way run configs choose a split: a preset plus options.

Both the VLM and the dense run configs say `model.split: <preset>` and, optionally,
`model.split_options: {<ViTSplitConfig field>: value}` applied over the preset.
"""
from __future__ import annotations

from dataclasses import fields

from .split import ViTSplitConfig, uniform_prior_layers

SPLIT_PRESETS: dict[str, ViTSplitConfig] = {
    # Dense tasks (ADE20K configs of the official code): ViT-S/B have 12 blocks, ViT-L 24; deformable 3x3 convs in
    # the prior head and fusion net, as the paper's dense backbone.
    "dinov2-s": ViTSplitConfig(task_layers=3, prior_layers=[2, 5, 8, 11], deformable=True),
    "dinov2-b": ViTSplitConfig(task_layers=3, prior_layers=[2, 5, 8, 11], deformable=True),
    "dinov2-l": ViTSplitConfig(task_layers=4, prior_layers=uniform_prior_layers(24, 8), deformable=True),
    # The VLM (LLaVA-1.5 fork): the task head re-computes CLIP's penultimate layer, the prior reads it frozen; its
    # 3x3 convs are plain (the fork comments the deformable one out).
    "clip-l-vlm": ViTSplitConfig(task_layers=1, prior_layers=[-2], feature_layer=-2),
    # Plain LLaVA-1.5 vision features, for baselines.
    "llava-baseline": ViTSplitConfig(feature_layer=-2, use_split=False),
}


def split_preset(name: str) -> ViTSplitConfig:
    if name not in SPLIT_PRESETS:
        raise ValueError(f"Unknown split preset '{name}'. Known presets: {', '.join(sorted(SPLIT_PRESETS))}.")
    preset = SPLIT_PRESETS[name]
    return ViTSplitConfig(**preset.to_dict())


def resolve_split(preset: str, options: dict | None = None, where: str = "model") -> ViTSplitConfig:
    """`<where>.split` (a preset name) with `<where>.split_options` applied; unknown names fail with the known ones."""
    if not isinstance(preset, str):
        raise ValueError(
            f"{where}.split must be a preset name ({', '.join(sorted(SPLIT_PRESETS))}); give individual settings "
            f"in {where}.split_options, e.g. {{task_layers: 2, prior_layers: [1, 3, 5]}}."
        )
    if preset not in SPLIT_PRESETS:
        raise ValueError(f"{where}.split: unknown preset '{preset}'. Known presets: {', '.join(sorted(SPLIT_PRESETS))}.")
    known = [f.name for f in fields(ViTSplitConfig)]
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise ValueError(f"{where}.split_options: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}.")
    return ViTSplitConfig(**{**split_preset(preset).to_dict(), **(options or {})})
