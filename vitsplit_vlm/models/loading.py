"""Loading a saved checkpoint for inference: what the chat demos and the VQA evaluation share.

Why one function: both must refuse a directory that is not a checkpoint the same way, pick the same dtype for a
device, and prompt with the conversation template the checkpoint was trained with (recorded in its config),
so a model answers in the evaluation exactly as it does in the chat.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import BatchFeature

from ..conversation import TEMPLATES
from .modeling_vitsplit_llava import VitSplitLlavaForConditionalGeneration
from .processing_vitsplit_llava import VitSplitLlavaProcessor

DEFAULT_TEMPLATE = "vicuna_v1"  # LLaVA-1.5's, for checkpoints that record none
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """This process's GPU under torchrun / accelerate (LOCAL_RANK, shared round-robin when ranks outnumber
    GPUs), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """auto: bfloat16 on a GPU (a 7B LM in float32 would need twice the memory), float32 elsewhere (half
    precision is slow on CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; choose one of {', '.join(TEMPLATES)}")
    return template


def load_for_inference(
    model_dir: str | Path, device: str | None = "auto", dtype: str = "auto", template: str | None = None
) -> tuple[VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor, str]:
    """(model in eval mode on `device` in `dtype`, processor, template) from a `save_pretrained` directory.

    device: "auto" (or None) is `default_device()`. dtype: "auto" or a name in DTYPES (see `resolve_dtype`).
    template: `template`, else the one the checkpoint's config records, else vicuna_v1. A directory without
    config.json or processor files raises FileNotFoundError, an unknown template or dtype ValueError.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only, never a hub lookup
    if not Path(model_dir, "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json; pass a directory written by save_pretrained (a trained or converted checkpoint)"
        )
    try:  # before the model: the cheap check first
        processor = VitSplitLlavaProcessor.from_pretrained(model_dir)
    except OSError as exc:
        raise FileNotFoundError(
            f"{model_dir}: cannot load the processor ({exc}); save it next to the model with "
            "VitSplitLlavaProcessor.save_pretrained (tokenizer + image processor + processor config)"
        ) from exc
    device = default_device() if device in (None, "auto") else device
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(model_dir, dtype=resolve_dtype(dtype, device))
    model = model.to(device).eval()
    template = check_template(template or getattr(model.config, "conversation_template", None) or DEFAULT_TEMPLATE)
    return model, processor, template


def to_model(inputs: BatchFeature, model) -> BatchFeature:
    """Processor outputs on the model's device, with the float ones (pixel_values) in the model's dtype: the
    processor always makes float32 pixels, which a bfloat16 tower cannot take. Ids stay integers."""
    return inputs.to(device=model.device, dtype=model.dtype)
