"""Configuration of the ViT-Split LLaVA model: vision tower + split settings + projector + causal LM."""
from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..vision import ViTSplitConfig, split_preset
from ..vision.towers import vision_config_of


class VitSplitLlavaConfig(PreTrainedConfig):
    """`vision_config` / `text_config` are the hand-downloaded checkpoints' own configs, kept whole so the tower
    and the LM are rebuilt by their Auto classes; `split` holds the `ViTSplitConfig` fields as a plain dict
    (JSON-serialisable, readable by the dense-task code without this class)."""

    model_type = "vitsplit_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    split: dict | ViTSplitConfig | None = None  # None = the paper's VLM preset "clip-l-vlm"
    projector_type: str = "mlp2x_gelu"
    image_token_id: int | None = None  # id of the <image> placeholder in the LM vocabulary
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # A full CLIP/SigLIP config (text + vision) is reduced to its vision part, as `load_tower` does.
        self.vision_config = vision_config_of(self.vision_config)
        split = split_preset("clip-l-vlm") if self.split is None else self.split
        self.split = (split if isinstance(split, ViTSplitConfig) else ViTSplitConfig(**split)).to_dict()
        vocab = self.text_config.vocab_size
        if self.image_token_id is not None and not 0 <= self.image_token_id < vocab:
            raise ValueError(
                f"image_token_id={self.image_token_id} is outside the LM vocabulary (size {vocab}); add the "
                "<image> token to the tokenizer, resize the LM's embeddings, and pass its id."
            )
        # Weight tying is decided by the LM's own config (Qwen2 small models tie, Llama does not).
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def split_config(self) -> ViTSplitConfig:
        return ViTSplitConfig(**self.split)
