"""The only model-facing part of the evaluation: batched greedy answers to (image, question) pairs.

The prompt is LLaVA-1.5's VQA prompt, ``"<image>\\n{question}\\n{instruction}"`` as the user turn, rendered with the
chat template the checkpoint was trained with (``config.conversation_template``, else vicuna_v1, as the chat CLI
does) through the processor, so evaluation sees exactly the layout training used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..conversation import IMAGE_TOKEN, TEMPLATES
from .io import EvalInputError
from .runner import Answerer

DEFAULT_TEMPLATE = "vicuna_v1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vqa_messages(question: str, instruction: str) -> list[dict[str, str]]:
    """One user turn: image first, then the question, then the answer-format instruction (if any)."""
    text = f"{IMAGE_TOKEN}\n{question}" + (f"\n{instruction}" if instruction else "")
    return [{"role": "user", "content": text}]


@torch.inference_mode()
def answer_batch(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    instruction: str,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers for a left-padded batch; the decoded continuation only, whitespace-stripped."""
    conversations = [vqa_messages(q, instruction) for q in questions]
    inputs = processor.apply_chat_template(conversations, template=template, tokenize=True, images=list(images),
                                           padding_side="left")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def default_device() -> str:
    """This process's GPU under torchrun / accelerate (LOCAL_RANK, shared round-robin when ranks outnumber
    GPUs), else the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def load_answerer(
    model_path: str | Path,
    *,
    instruction: str,
    max_new_tokens: int,
    template: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
) -> Answerer:
    """Load a saved VitSplitLlava checkpoint + processor and bind them into an ``Answerer``."""
    from ..models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise EvalInputError(f"--model-path {model_path} has no config.json; pass a directory written by "
                             "save_pretrained (model and processor files).")
    device = device or default_device()
    torch_dtype = DTYPES[dtype] if dtype != "auto" else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = VitSplitLlavaForConditionalGeneration.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
    processor = VitSplitLlavaProcessor.from_pretrained(model_path)
    template = template or getattr(model.config, "conversation_template", None) or DEFAULT_TEMPLATE
    if template not in TEMPLATES:
        raise EvalInputError(f"unknown conversation template {template!r}; choose one of {', '.join(TEMPLATES)}.")
    return functools.partial(answer_batch, model, processor, instruction=instruction, template=template,
                             max_new_tokens=max_new_tokens)
