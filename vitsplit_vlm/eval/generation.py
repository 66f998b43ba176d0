"""The only model-facing part of the evaluation: greedy answers to (image, prompt) pairs, through
`vitsplit_vlm.models.generation.generate_replies` (one vision pass and prefix prefill per image).

The user turn is LLaVA-1.5's, ``"<image>\\n{prompt}"`` (the benchmark composes the prompt: question, options,
instruction), rendered with the chat template the checkpoint was trained with (``config.conversation_template``,
else vicuna_v1, as the chat CLI does) through the processor, so evaluation sees exactly the layout training used.
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


def image_prompt_messages(prompt: str) -> list[dict[str, str]]:
    """One user turn: the image first, then the benchmark's prompt."""
    return [{"role": "user", "content": f"{IMAGE_TOKEN}\n{prompt}"}]


def answer_batch(
    model,
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to (image, prompt) pairs, each prompted as `image_prompt_messages` writes it, through
    `generate_replies` (one vision pass and prefix prefill per image, at most ``batch_size`` prompts decoded at
    once; the runner hands over whole images)."""
    conversations = [image_prompt_messages(p) for p in prompts]
    return generate_replies(model, processor, images, conversations, template=template,
                            max_new_tokens=max_new_tokens, batch_size=batch_size)


def load_answerer(
    model_path: str | Path,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
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
    return functools.partial(answer_batch, model, processor, template=template, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)
