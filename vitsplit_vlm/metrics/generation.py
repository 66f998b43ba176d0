"""The only model-facing part of the evaluation: batched greedy answers to (image, question) pairs.

The prompt is LLaVA-1.5's VQA prompt, ``"<image>\\n{question}\\n{instruction}"`` as the user turn, rendered with the
chat template the checkpoint was trained with (``config.conversation_template``, else vicuna_v1, as the chat CLI
does) through the processor, so evaluation sees exactly the layout training used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..conversation import IMAGE_TOKEN
from ..models.loading import DEFAULT_TEMPLATE, load_for_inference, to_model
from .io import EvalInputError
from .runner import Answerer


def vqa_messages(question: str, instruction: str) -> list[dict[str, str]]:
    """One user turn: image first, then the question, then the answer-format instruction (if any)."""
    text = f"{IMAGE_TOKEN}\n{question}" + (f"\n{instruction}" if instruction else "")
    return [{"role": "user", "content": text}]


@torch.inference_mode()
def answer_conversations(
    model,
    processor,
    images: Sequence[Image.Image],
    conversations: Sequence[list[dict[str, str]]],
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy replies to conversations that end with a user turn, as a left-padded batch; the decoded
    continuation only, whitespace-stripped. Shared with the post-training evaluation, which prompts with the
    records' own user turns."""
    inputs = processor.apply_chat_template(list(conversations), template=template, tokenize=True, images=list(images),
                                           padding_side="left")
    inputs = to_model(inputs, model)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


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
    """Greedy answers to VQA questions, each prompted as `vqa_messages` writes it."""
    conversations = [vqa_messages(q, instruction) for q in questions]
    return answer_conversations(model, processor, images, conversations, template=template,
                                max_new_tokens=max_new_tokens)


def load_answerer(
    model_path: str | Path,
    *,
    instruction: str,
    max_new_tokens: int,
    template: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
) -> Answerer:
    """Load a saved VitSplitLlava checkpoint + processor (``load_for_inference``, as the chat does) and bind them
    into an ``Answerer``; a bad checkpoint dir or template is an ``EvalInputError`` (one line, exit 2)."""
    try:
        model, processor, template = load_for_inference(model_path, device=device, dtype=dtype, template=template)
    except (FileNotFoundError, ValueError) as exc:
        raise EvalInputError(str(exc)) from exc
    return functools.partial(answer_batch, model, processor, instruction=instruction, template=template,
                             max_new_tokens=max_new_tokens)
