"""Vision-to-language projectors: visual tokens (vision width) -> LM embedding width.

Names follow LLaVA's `mm_projector_type`: `linear` (LLaVA-1), `mlp{N}x_gelu` (LLaVA-1.5 uses `mlp2x_gelu`), and
`identity` for the paper's VLM variant, where the fusion head already outputs the LM width and no MLP follows.
The MLP is an `nn.Sequential` so its weights are `projector.0.*`, `projector.2.*`, as in LLaVA's `mm_projector`.
"""
from __future__ import annotations

import re

from torch import nn

PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "identity")


def build_projector(projector_type: str, vision_dim: int, text_dim: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(vision_dim, text_dim)
    if projector_type == "identity":
        if vision_dim != text_dim:
            raise ValueError(
                f"projector_type 'identity' needs visual tokens as wide as the LM ({text_dim}), got {vision_dim}; "
                f"set split fusion_dim={text_dim} or use 'mlp2x_gelu'."
            )
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"Unknown projector_type '{projector_type}'. Known: {', '.join(PROJECTOR_TYPES)}.")
    layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
    return nn.Sequential(*layers)
