"""Interactive chat with a ViT-Split LLaVA checkpoint: what the terminal and the web demo share.

Why one module: ``scripts/chat.py`` and ``scripts/web_demo.py`` must agree on how a conversation is rendered (the
template the model was trained with, tokenised by the checkpoint's processor with training's bos and image-token
rules), where the image goes (in the first user turn that has it, as LLaVA does), when the history must go (a
LLaVA-1.5-style model sees one image per conversation, so swapping the image starts a new one) and how tokens are
streamed (``TextIteratorStreamer`` fed by ``generate`` in a worker thread).

:class:`ChatModel` is the shared, stateless part (model, processor, template, sampling settings);
:class:`ChatSession` is one conversation (history + image) on top of it. A session keeps the model's key/value
cache of what it has already read (:class:`PromptCache`), so a turn prefills only the tokens that follow the
longest prefix the cache holds: the new user text, not the image and the history again. Reusing the keys and
values of a prefix is exact (a causal LM's keys at a position depend only on the tokens before it), so the reply
equals a full re-prefill's (tested).
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
from transformers import BatchFeature, DynamicCache, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .conversation import IMAGE_TOKEN, TEMPLATES, Message
from .models import to_rgb
from .models.loading import DEFAULT_TEMPLATE, DTYPES, check_template, load_for_inference, to_model

COMMANDS_HELP = "Commands: /image PATH, /reset, /quit."
EMPTY_REPLY = "[empty reply: the model ended its turn at once]"  # shown instead of a blank answer
NEW_CONVERSATION = "/reset to start a new conversation (then /image to load a picture again)"


class ContextWindowFull(Exception):
    """The prompt does not fit the LM's context window; the message says how to go on."""


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

    @property
    def context_window(self) -> int | None:
        """The LM's maximum number of positions (prompt + reply), None when the model does not say."""
        config = self.model.config
        return None if config is None else config.get_text_config(decoder=True).max_position_embeddings

    def inputs(self, messages: list[Message], image: Image.Image | None) -> BatchFeature:
        """``generate`` inputs for a history ending with a user turn (one ``<image>`` iff ``image`` is given)."""
        inputs = self.processor.apply_chat_template(messages, template=self.template, tokenize=True, images=None if image is None else [image])
        return to_model(inputs, self.model)

    def stream(self, messages: list[Message], image: Image.Image | None, cache: PromptCache | None = None) -> Iterator[str]:
        """Yield the reply to ``messages`` (ending with a user turn) as it is generated.

        ``cache`` (a session's) holds what the model read before: only the tokens after the longest prefix it
        shares with this prompt are prefilled, and it holds this prompt and reply afterwards. A prompt that does
        not fit the context window raises :class:`ContextWindowFull` before any work; the reply is capped at the
        window. ``generate`` runs in a thread feeding a ``TextIteratorStreamer``; closing this iterator early
        (Ctrl-C, a cancelled web request) stops generation at the next token instead of letting it run to
        max_new_tokens. An exception raised by ``generate`` is re-raised here.
        """
        inputs = self.inputs(messages, image)
        prompt_len = inputs["input_ids"].shape[1]
        window = self.context_window
        if window is not None and prompt_len >= window:
            raise ContextWindowFull(
                f"[This conversation would need {prompt_len} tokens before the reply, past the model's context "
                f"window of {window}: {NEW_CONVERSATION}.]"
            )
        cache = cache if cache is not None else PromptCache()
        if cache.reuse(inputs["input_ids"][0].tolist(), self.processor.image_token_id, self.model):
            inputs.pop("pixel_values", None)  # the image's tokens are in the cache
        options = self.settings.generate_kwargs()
        if window is not None:
            options["max_new_tokens"] = min(options["max_new_tokens"], window - prompt_len)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                sequences = self.model.generate(
                    **inputs, **options, cache=cache.cache, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                )
                cache.read(sequences[0].tolist())
            except BaseException as exc:  # noqa: BLE001 -- handed to the reading thread below
                cache.drop()  # a forward that failed midway may have filled only some layers
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


@dataclass
class PromptCache:
    """The LM's key/value cache of one conversation and the token ids it holds, in order."""

    cache: DynamicCache | None = None
    ids: list[int] = field(default_factory=list)

    def drop(self) -> None:
        self.cache, self.ids = None, []

    def reuse(self, prompt: list[int], image_token_id: int, model: Any) -> bool:
        """Get ready to read ``prompt``: keep the longest prefix of it the cache holds, cropped so at least one
        prompt token is left to feed, if that prefix covers every image token (image tokens have the same id for
        any picture, so a new image must never match an old one: sessions drop the cache when the image changes).
        Otherwise start an empty cache. Returns whether the image tokens are cached."""
        shared = next((i for i, (a, b) in enumerate(zip(self.ids, prompt)) if a != b), min(len(self.ids), len(prompt)))
        keep = min(shared, len(prompt) - 1)
        image_end = max((i + 1 for i, t in enumerate(prompt) if t == image_token_id), default=0)
        if self.cache is None or keep == 0 or keep < image_end:
            self.cache, self.ids = DynamicCache(config=model.config), []
            return False
        self.cache.crop(keep - self.cache.get_seq_length())
        self.ids = self.ids[:keep]
        return image_end > 0

    def read(self, sequence: list[int]) -> None:
        """After ``generate``: the cache holds the first ``get_seq_length()`` tokens of prompt + reply (the last
        token generated was never fed back)."""
        self.ids = sequence[:self.cache.get_seq_length()]


class ChatSession:
    """One conversation: the history (plain text, as typed) and the image, with LLaVA's one-image rule.

    The image is placed in the first user turn asked after it is loaded; once the model has seen it there,
    loading another image starts a new conversation (the model was trained with one image per conversation).
    The ``plain`` template (stage-1 checkpoints) renders only the image, so each of its turns stands alone.
    """

    def __init__(self, chat_model: ChatModel, reuse_cache: bool = True):
        self.chat_model = chat_model
        self.cache = PromptCache() if reuse_cache else None  # None: re-read the whole conversation every turn
        self.messages: list[Message] = []
        self.image: Image.Image | None = None
        self.image_path: str | None = None
        self.image_label: str | None = None
        self.image_turn: int | None = None  # index in messages of the user turn holding the image

    def reset(self) -> None:
        """Forget the history, the image and the cache."""
        self.messages, self.image, self.image_path, self.image_label, self.image_turn = [], None, None, None, None
        self._drop_cache()

    def _drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.drop()

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
        self._drop_cache()  # its image tokens (same ids for any picture) would stand for the old image
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
        """Stream the reply to ``text``; the turn joins the history only once the reply is complete. A turn that
        would pass the context window yields a message saying so (and how to go on) instead, and is not kept."""
        text = text.replace(IMAGE_TOKEN, "").strip()  # a typed "<image>" would be a placeholder with no pixels
        turns, image_turn = self.prompt_messages(text)
        reply = []
        # closing(): closing this generator must close the model's stream now (which stops generate), not
        # whenever the garbage collector gets to it.
        image = self.image if image_turn is not None else None
        cache = self.cache if self.cache is not None else PromptCache()
        with closing(self.chat_model.stream(turns, image, cache)) as stream:
            try:
                for chunk in stream:
                    reply.append(chunk)
                    yield chunk
            except ContextWindowFull as full:
                yield str(full)
                return
        window = self.chat_model.context_window
        if window is not None and len(cache.ids) + 1 >= window:
            yield f" [The reply stopped at the model's context window of {window} tokens: {NEW_CONVERSATION}.]"
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
