"""The ViT-Split multimodal LLM. Importing this package registers it with the Auto classes (no remote code):
`AutoConfig` / `AutoModelForImageTextToText` / `AutoProcessor.from_pretrained(dir)` then load our checkpoints."""
from transformers import AutoConfig, AutoModelForImageTextToText

from .configuration_vitsplit_llava import VitSplitLlavaConfig
from .modeling_vitsplit_llava import (
    IMAGE_TOKEN, TRAINABLE_PARTS, PartCount, VitSplitLlavaForConditionalGeneration,
)
from .projector import build_projector

AutoConfig.register(VitSplitLlavaConfig.model_type, VitSplitLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(VitSplitLlavaConfig, VitSplitLlavaForConditionalGeneration, exist_ok=True)

__all__ = [
    "IMAGE_TOKEN", "TRAINABLE_PARTS", "PartCount", "VitSplitLlavaConfig", "VitSplitLlavaForConditionalGeneration",
    "build_projector",
]
