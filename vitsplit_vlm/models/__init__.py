"""The ViT-Split multimodal LLM. Importing this package registers it with the Auto classes (no remote code):
`AutoConfig` / `AutoModelForImageTextToText` / `AutoProcessor.from_pretrained(dir)` then load our checkpoints."""
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .configuration_vitsplit_llava import VitSplitLlavaConfig
from .modeling_vitsplit_llava import (
    IMAGE_TOKEN, TRAINABLE_PARTS, PartCount, VitSplitLlavaForConditionalGeneration,
)
from .processing_vitsplit_llava import VitSplitLlavaProcessor, expand_to_square, to_rgb
from .projector import build_projector
from .tokenizer import prepare_tokenizer

AutoConfig.register(VitSplitLlavaConfig.model_type, VitSplitLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(VitSplitLlavaConfig, VitSplitLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VitSplitLlavaConfig, VitSplitLlavaProcessor, exist_ok=True)

__all__ = [
    "IMAGE_TOKEN", "TRAINABLE_PARTS", "PartCount", "VitSplitLlavaConfig", "VitSplitLlavaForConditionalGeneration",
    "VitSplitLlavaProcessor", "build_projector", "expand_to_square", "prepare_tokenizer", "to_rgb",
]
