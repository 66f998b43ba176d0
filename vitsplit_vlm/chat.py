"""Interactive chat with a ViT-Split LLaVA checkpoint: what the terminal and the web demo share.

Why one module: ``scripts/chat.py`` and ``scripts/web_demo.py`` must agree on how a conversation is rendered (the
template the model was trained with, tokenised by the checkpoint's processor with training's bos and image-token
rules), where the image goes (in the first user turn that has it, as LLaVA does), when the history must go (a
LLaVA-1.5-style model sees one image per conversation, so swapping the image starts a new one) and how tokens are
streamed (``TextIteratorStreamer`` fed by ``generate`` in a worker thread).

:class:`ChatModel` is the shared, stateless part (model, processor, template, sampling settings);
:class:`ChatSession` is one conversation (history + image) on top of it.
"""
from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .conversation import IMAGE_TOKEN, TEMPLATES, Message
from .models import to_rgb
from .models.loading import DEFAULT_TEMPLATE, DTYPES, check_template, load_for_inference, to_model

COMMANDS_HELP = "Commands: /image PATH, /reset, /quit."
EMPTY_REPLY = "[empty reply: the model ended its turn at once]"  # shown instead of a blank answer


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling flags; ``temperature=0`` means greedy decoding (``top_p`` is then unused)."""

    max_new_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")

    def generate_kwargs(self) -> dict[str, Any]:
        """Why not always pass temperature/top_p: transformers warns when they are set with ``do_sample=False``."""
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def load_image(path: str | Path) -> Image.Image:
    """Any size, any mode PIL reads -> RGB (the processor resizes). Decodes now, so a truncated file fails here."""
    with Image.open(path) as image:
        return to_rgb(image)


def _reason(exc: Exception) -> str:
    """``[Errno 2] No such file or directory: 'x'`` repeats the path the message already names; keep the cause."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class _StopOnEvent(StoppingCriteria):
    """Ends ``generate`` in the worker thread once the reader goes away (Ctrl-C, a closed web stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ChatModel:
    """A loaded model and its processor, the chat template and the sampling settings.

    ``model`` needs ``generate(input_ids=, attention_mask=, pixel_values=, streamer=, stopping_criteria=, **sampling)``,
    ``device`` and ``dtype``; ``processor`` is a :class:`VitSplitLlavaProcessor` (or anything with its
    ``apply_chat_template(messages, template=, tokenize=True, images=)`` and ``tokenizer``).
    """

    model: Any
    processor: Any
    template: str = DEFAULT_TEMPLATE
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        check_template(self.template)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        template: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        settings: GenerationSettings | None = None,
    ) -> ChatModel:
        """Load a checkpoint directory with `load_for_inference` (as the evaluation does); the template is
        ``template``, else the one its config records, else vicuna_v1."""
        model, processor, template = load_for_inference(model_dir, device=device, dtype=dtype, template=template)
        return cls(model, processor, template, settings or GenerationSettings())

    def inputs(self, messages: list[Message], image: Image.Image | None) -> BatchFeature:
        """``generate`` inputs for a history ending with a user turn (one ``<image>`` iff ``image`` is given)."""
        inputs = self.processor.apply_chat_template(messages, template=self.template, tokenize=True, images=None if image is None else [image])
        return to_model(inputs, self.model)

    def stream(self, messages: list[Message], image: Image.Image | None) -> Iterator[str]:
        """Yield the reply to ``messages`` (ending with a user turn) as it is generated.

        ``generate`` runs in a thread feeding a ``TextIteratorStreamer``; closing this iterator early (Ctrl-C, a
        cancelled web request) stops generation at the next token instead of letting it run to max_new_tokens.
        An exception raised by ``generate`` is re-raised here.
        """
        inputs = self.inputs(messages, image)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(
                    **inputs, **self.settings.generate_kwargs(), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                )
            except BaseException as exc:  # noqa: BLE001 -- handed to the reading thread below
                failures.append(exc)
                streamer.end()  # unblock the reader

        worker = threading.Thread(target=run, name="chat-generate", daemon=True)
        worker.start()
        try:
            for chunk in streamer:
                if chunk:
                    yield chunk
        finally:
            stop.set()
            worker.join()
        if failures:
            raise failures[0]


class ChatSession:
    """One conversation: the history (plain text, as typed) and the image, with LLaVA's one-image rule.

    The image is placed in the first user turn asked after it is loaded; once the model has seen it there,
    loading another image starts a new conversation (the model was trained with one image per conversation).
    The ``plain`` template (stage-1 checkpoints) renders only the image, so each of its turns stands alone.
    """

    def __init__(self, chat_model: ChatModel):
        self.chat_model = chat_model
        self.messages: list[Message] = []
        self.image: Image.Image | None = None
        self.image_path: str | None = None
        self.image_label: str | None = None
        self.image_turn: int | None = None  # index in messages of the user turn holding the image

    def reset(self) -> None:
        """Forget the history and the image."""
        self.messages, self.image, self.image_path, self.image_label, self.image_turn = [], None, None, None, None

    def set_image(self, path: str | Path, label: str | None = None) -> str:
        """Load (or swap) the image; returns the message to show, naming it ``label`` (default: the path).

        A bad path keeps the session as it was.
        """
        label = label or str(path)
        try:
            image = load_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return f"Could not open image {label}: {_reason(exc)}. Still using {self.image_label or 'no image'}."
        note = ""
        if self.image_turn is not None:
            self.messages = []
            note = " Started a new conversation: the model sees one image per conversation."
        self.image, self.image_path, self.image_label, self.image_turn = image, str(path), label, None
        return f"Loaded image {label} ({image.width}x{image.height}).{note}"

    def prompt_messages(self, text: str) -> tuple[list[Message], int | None]:
        """The turns the model is prompted with for a new question, and which of them holds the image."""
        standalone = self.chat_model.template == "plain"
        turns = [] if standalone else [dict(m) for m in self.messages]
        image_turn = None if standalone else self.image_turn
        turns.append({"role": "user", "content": text})
        if self.image is not None and image_turn is None:
            image_turn = len(turns) - 1
        if image_turn is not None:
            turns[image_turn]["content"] = f"{IMAGE_TOKEN}\n{turns[image_turn]['content']}"
        return turns, image_turn

    def ask(self, text: str) -> Iterator[str]:
        """Stream the reply to ``text``; the turn joins the history only once the reply is complete."""
        text = text.replace(IMAGE_TOKEN, "").strip()  # a typed "<image>" would be a placeholder with no pixels
        turns, image_turn = self.prompt_messages(text)
        reply = []
        # closing(): closing this generator must close the model's stream now (which stops generate), not
        # whenever the garbage collector gets to it.
        with closing(self.chat_model.stream(turns, self.image if image_turn is not None else None)) as stream:
            for chunk in stream:
                reply.append(chunk)
                yield chunk
        if image_turn is not None and self.chat_model.template != "plain":
            self.image_turn = image_turn
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(reply).strip()}]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The loading and sampling flags both demos take."""
    parser.add_argument("--model", required=True, help="checkpoint directory (written by save_pretrained)")
    parser.add_argument("--template", choices=TEMPLATES, help="conversation template (default: the checkpoint's, else vicuna_v1)")
    parser.add_argument("--device", help="torch device (default: cuda if available, cuda:$LOCAL_RANK under torchrun, else cpu)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bfloat16 on cuda, else float32")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationSettings.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=GenerationSettings.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=GenerationSettings.top_p)


def chat_model_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ChatModel:
    """Load what the flags name; a bad flag or checkpoint dir is a usage error (message + exit 2), not a traceback."""
    try:
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
        return ChatModel.load(args.model, template=args.template, device=args.device, dtype=args.dtype, settings=settings)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
