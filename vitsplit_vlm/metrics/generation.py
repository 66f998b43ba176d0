"""The only model-facing part of the evaluation: greedy answers to (image, question) pairs, through
`vitsplit_vlm.models.generation.generate_replies` (one vision pass and prefix prefill per image).

The prompt is LLaVA-1.5's VQA prompt, ``"<image>\\n{question}\\n{instruction}"`` as the user turn, rendered with the
chat template the checkpoint was trained with (``config.conversation_template``, else vicuna_v1, as the chat CLI
does) through the processor, so evaluation sees exactly the layout training used.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..conversation import IMAGE_TOKEN
from ..models.generation import generate_replies
from ..models.loading import DEFAULT_TEMPLATE, load_for_inference
from .io import EvalInputError
from .runner import Answerer


def vqa_messages(question: str, instruction: str) -> list[dict[str, str]]:
    """One user turn: image first, then the question, then the answer-format instruction (if any)."""
    text = f"{IMAGE_TOKEN}\n{question}" + (f"\n{instruction}" if instruction else "")
    return [{"role": "user", "content": text}]


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
    """Greedy answers to VQA questions, each prompted as `vqa_messages` writes it, in one prefix-shared batch
    (`generate_replies`: the caller sizes the batch, keeping an image's questions together)."""
    conversations = [vqa_messages(q, instruction) for q in questions]
    return generate_replies(model, processor, images, conversations, template=template,
                            max_new_tokens=max_new_tokens, batch_size=max(len(questions), 1))


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
