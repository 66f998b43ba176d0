"""Chat templates and label-masked tokenisation for LLaVA-style training, chat and evaluation.

One renderer serves all three, so a checkpoint is always prompted with the text and ids it was trained on. The
rules follow LLaVA-1.5 (haotian-liu/LLaVA at c121f04: ``llava/conversation.py``, ``llava/mm_utils.py``
``tokenizer_image_token``, ``llava/train/train.py`` ``preprocess_multimodal`` / ``preprocess_v1`` /
``preprocess_plain``).

Three templates:

* ``plain`` -- LLaVA stage 1 (``conv_llava_plain``): the image placeholder, then the answer (caption). The human
  text is dropped, there is no system prompt, and only the answer + end marker is learned. LLaVA ends the caption
  with ``"\\n"``; we end it with eos so that generation after stage 1 knows where to stop (the one deliberate
  deviation).
* ``vicuna_v1`` -- LLaVA-1.5's ``conv_vicuna_v1``: ``SYSTEM + " " + "USER: q ASSISTANT: a</s>" ...`` with
  ``sep=" "`` and ``sep2=eos`` (``"</s>"`` for Llama/Vicuna tokenizers).
* ``chat_template`` -- the tokenizer's own ``apply_chat_template`` (Jinja), for chat LLMs other than Vicuna.

Image layout (:func:`image_first`): a turn holding ``<image>`` is rewritten as ``preprocess_multimodal`` does,
the placeholder first, then a newline, then the stripped text; an image-only turn is just ``<image>``.

Token ids (:func:`encode_text`): the text on each side of ``<image>`` is tokenised on its own, as LLaVA's
``tokenizer_image_token`` does, so the piece after an image starts a new word (a sentencepiece tokenizer gives it
its prefix ``▁``). Tokenising the whole string instead would make the ids after ``<image>`` depend on the
tokenizer's ``legacy`` setting (non-legacy Llama tokenizers add no ``▁`` after a special token); this way they
equal LLaVA's under both settings. The text between images (e.g. ``"red</s>USER: ..."`` in multi-turn
conversations) is tokenised by the tokenizer as it is configured, as LLaVA does: there ``legacy`` still decides
whether ``USER`` after ``</s>`` gets a ``▁``, in LLaVA's ids and ours alike. ``plain`` and ``vicuna_v1`` prepend
the tokenizer's bos; ``chat_template`` templates write bos themselves.

Masking is exact by construction: a conversation is rendered as a list of segments, each either learned
(an assistant reply and its end-of-turn marker) or not, and the label of a token is decided by the segment it
comes from. Each segment end is located by encoding the text up to it, and a tokenizer that merges characters
across a segment boundary is refused instead of being masked approximately (LLaVA's ``preprocess_v1`` silently
masks out such records).

Messages are Hugging Face style dicts ``{"role": "user"|"assistant", "content": str}``; the image placeholder
:data:`IMAGE_TOKEN` appears in the text once per image and stays ONE token here. Expanding it into the model's
number of visual tokens is :func:`expand_image_tokens`; :func:`tokenize_conversation` already counts each image
as ``num_image_tokens`` when truncating, so ``expand_image_tokens`` never pushes a sequence past ``max_length``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
TEMPLATES = ("plain", "vicuna_v1", "chat_template")
Template = Literal["plain", "vicuna_v1", "chat_template"]

VICUNA_SYSTEM = (  # conv_vicuna_v1's; the "curious human ... human's questions" wording is conv_llava_v1's
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_ROLES = {"human": "user", "gpt": "assistant"}

Message = dict[str, str]
Segment = tuple[str, bool]  # (text, learned)


class ConversationError(ValueError):
    """A conversation that cannot be trained on (roles, empty answer, too long); the data layer adds the id."""


@dataclass(frozen=True)
class TokenizedConversation:
    """Ids with one image-token id per image, labels aligned to them, and whether max_length cut the tail."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def messages_from_llava(turns: object) -> list[Message]:
    """LLaVA ``conversations`` (``from`` human/gpt, ``value``) -> messages, checking roles and answers.

    Why strict: LLaVA silently skips a leading gpt turn and asserts on others; a record with the wrong shape is
    reported here instead, so the data check can list it by id.
    """
    if not isinstance(turns, list) or not turns:
        raise ConversationError("'conversations' must be a non-empty list of {from, value} turns")
    froms = [t.get("from") if isinstance(t, Mapping) else None for t in turns]
    expected = ["human" if i % 2 == 0 else "gpt" for i in range(len(turns))]
    if froms != expected or len(turns) % 2:
        raise ConversationError(f"bad roles {froms}: expected alternating human/gpt turns starting with human and ending with gpt")
    messages = []
    for i, turn in enumerate(turns):
        value = turn.get("value")
        if not isinstance(value, str):
            raise ConversationError(f"turn {i} ({turn['from']}): 'value' must be a string, got {type(value).__name__}")
        if turn["from"] == "gpt" and not value.strip():
            raise ConversationError(f"empty answer in turn {i}")
        messages.append({"role": _LLAVA_ROLES[turn["from"]], "content": value})
    return messages


def image_first(text: str) -> str:
    """A turn's text laid out as LLaVA-1.5's ``preprocess_multimodal`` does: placeholder(s) first, a newline, the
    stripped text; ``"<image>"`` alone when there is no text. Text without a placeholder is returned as it is.

    LLaVA collapses several placeholders in one turn into one; we keep one per image (the processor needs one per
    image) -- a layout LLaVA-1.5 never trains on, so the data layer refuses multi-image records.
    """
    count = text.count(IMAGE_TOKEN)
    if not count:
        return text
    return (IMAGE_TOKEN * count + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def _check_roles(messages: Sequence[Mapping[str, str]], generation: bool) -> None:
    roles = [m["role"] for m in messages]
    n = len(roles) + (1 if generation else 0)  # a prompt ends with a user turn the model answers
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(n)]
    if not roles or n % 2 or roles != expected[: len(roles)]:
        want = "ending with user" if generation else "ending with assistant"
        raise ConversationError(f"bad roles {roles}: expected alternating user/assistant turns starting with user, {want}")


def _plain_segments(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, generation: bool) -> list[Segment]:
    if len(messages) != (1 if generation else 2):
        raise ConversationError(f"the plain template takes one user turn and one assistant turn, got {len(messages)} turns")
    prompt = IMAGE_TOKEN * messages[0]["content"].count(IMAGE_TOKEN)
    return [(prompt, False)] if generation else [(prompt, False), (messages[1]["content"] + tokenizer.eos_token, True)]


def _vicuna_segments(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, generation: bool) -> list[Segment]:
    segments: list[Segment] = []
    head = VICUNA_SYSTEM + " "
    for i in range(0, len(messages), 2):
        segments.append((f"{head}USER: {messages[i]['content']} ASSISTANT:", False))
        head = ""
        if i + 1 < len(messages):
            segments.append((f" {messages[i + 1]['content']}{tokenizer.eos_token}", True))
    return segments


def _chat_template_segments(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, generation: bool) -> list[Segment]:
    """Diff successive renders: render(turns < k, generation prompt) .. render(turns <= k) is reply k + end-of-turn."""
    if not tokenizer.chat_template:
        raise ConversationError("template 'chat_template' needs a tokenizer with a chat_template; use 'vicuna_v1' or 'plain'")

    def render(upto: int, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(list(messages[:upto]), tokenize=False, add_generation_prompt=add_generation_prompt)

    segments: list[Segment] = []
    done = ""
    for k in range(1, len(messages) + 1, 2):
        prompt = render(k, True)
        if not prompt.startswith(done):
            raise ConversationError("the tokenizer's chat_template does not render conversations incrementally; labels cannot be masked by turn")
        segments.append((prompt[len(done):], False))
        if k < len(messages):
            done = render(k + 1, False)
            if not done.startswith(prompt):
                raise ConversationError("the tokenizer's chat_template does not render conversations incrementally; labels cannot be masked by turn")
            segments.append((done[len(prompt):], True))
    return segments


_SEGMENTERS = {"plain": _plain_segments, "vicuna_v1": _vicuna_segments, "chat_template": _chat_template_segments}


def _segments(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, template: str, generation: bool) -> list[Segment]:
    if template not in _SEGMENTERS:
        raise ValueError(f"unknown conversation template {template!r}; choose one of {TEMPLATES}")
    _check_roles(messages, generation)
    laid_out = [{**m, "content": image_first(m["content"])} for m in messages]
    return _SEGMENTERS[template](laid_out, tokenizer, generation)


def _bos(tokenizer: PreTrainedTokenizerBase, template: str) -> list[int]:
    """plain/vicuna_v1 rely on the tokenizer's bos (as LLaVA does); chat templates write their own."""
    if template == "chat_template" or tokenizer.bos_token_id is None:
        return []
    return [tokenizer.bos_token_id]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of ``text`` without special tokens added, ``<image>`` as one id, each piece around it tokenised on its
    own (LLaVA's ``tokenizer_image_token`` rule; see the module docstring for why)."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    for index, piece in enumerate(text.split(IMAGE_TOKEN)):
        if index:
            ids.append(image_id)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def render_prompt(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, template: Template) -> str:
    """Inference text for a history ending with a user turn, up to where the assistant's reply starts."""
    return "".join(text for text, _ in _segments(messages, tokenizer, template, generation=True))


def encode_prompt(messages: Sequence[Mapping[str, str]], tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """Ids of :func:`render_prompt` under the same bos rule as training (one image-token id per image)."""
    return _bos(tokenizer, template) + encode_text(tokenizer, render_prompt(messages, tokenizer, template))


def tokenize_conversation(
    messages: Sequence[Mapping[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    *,
    max_length: int | None = None,
    num_image_tokens: int = 1,
) -> TokenizedConversation:
    """Training ids + labels (IGNORE_INDEX except assistant replies and their end-of-turn marker).

    ``max_length`` counts each image as ``num_image_tokens`` (its length after :func:`expand_image_tokens`).
    Longer conversations lose their tail (``truncated=True``); one whose image tokens or every answer token
    would be cut raises :class:`ConversationError`, because training on it teaches nothing or breaks the
    image-token count the model expects.
    """
    segments = _segments(messages, tokenizer, template, generation=False)
    full = "".join(text for text, _ in segments)
    ids = encode_text(tokenizer, full)
    labels = [IGNORE_INDEX] * len(ids)
    end_char, prev = 0, 0
    for text, learned in segments:
        end_char += len(text)
        prefix = encode_text(tokenizer, full[:end_char])
        if ids[: len(prefix)] != prefix:
            raise ConversationError(
                f"the tokenizer merges text across a turn boundary of template {template!r} "
                f"(at {full[max(0, end_char - 20):end_char + 20]!r}); labels cannot be masked exactly"
            )
        if learned:
            labels[prev:len(prefix)] = ids[prev:len(prefix)]
        prev = len(prefix)
    bos = _bos(tokenizer, template)
    ids, labels = bos + ids, [IGNORE_INDEX] * len(bos) + labels
    return _truncate(ids, labels, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), max_length, num_image_tokens)


def _truncate(ids: list[int], labels: list[int], image_token_id: int, max_length: int | None, num_image_tokens: int) -> TokenizedConversation:
    image_positions = [i for i, t in enumerate(ids) if t == image_token_id]
    extra = len(image_positions) * (num_image_tokens - 1)
    if max_length is None or len(ids) + extra <= max_length:
        return TokenizedConversation(ids, labels, truncated=False)
    keep = max_length - extra
    if image_positions and image_positions[-1] >= keep:
        raise ConversationError(
            f"conversation too long for model_max_length={max_length}, image tokens would be cut; "
            "raise model_max_length or drop the record"
        )
    if all(label == IGNORE_INDEX for label in labels[:keep]):
        raise ConversationError(f"no answer tokens left after truncation to model_max_length={max_length}; raise model_max_length or drop the record")
    return TokenizedConversation(ids[:keep], labels[:keep], truncated=True)


def expand_image_tokens(
    input_ids: Sequence[int], labels: Sequence[int], image_token_id: int, num_image_tokens: int
) -> tuple[list[int], list[int]]:
    """Repeat each image-token id ``num_image_tokens`` times (as HF Llava's processor does); never learned."""
    out_ids: list[int] = []
    out_labels: list[int] = []
    for token, label in zip(input_ids, labels, strict=True):
        if token == image_token_id:
            out_ids.extend([token] * num_image_tokens)
            out_labels.extend([IGNORE_INDEX] * num_image_tokens)
        else:
            out_ids.append(token)
            out_labels.append(label)
    return out_ids, out_labels
