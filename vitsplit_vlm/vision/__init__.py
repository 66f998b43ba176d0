from .presets import SPLIT_PRESETS, resolve_split, split_preset
from .split import FeaturePyramid, ViTSplit, ViTSplitConfig, ViTSplitOutput, uniform_prior_layers
from .towers import build_tower, load_tower

__all__ = [
    "SPLIT_PRESETS", "resolve_split", "split_preset", "FeaturePyramid", "ViTSplit", "ViTSplitConfig", "ViTSplitOutput",
    "uniform_prior_layers", "build_tower", "load_tower",
]
