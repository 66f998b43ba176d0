"""Greedy replies to many (image, conversation) pairs: one vision pass and one prefix prefill per image.

Why: in a LLaVA VQA prompt the system text and the image tokens (576 for LLaVA-1.5) are over 90% of the tokens,
and they are the same for every question about one image (VQAv2 val: 5.3 questions per image, POPE: 6 per split).
Prefilling them once per image instead of once per question is most of the evaluation's compute.

How, exactly rather than approximately:

1. Every prompt is tokenised as the per-question path does (`VitSplitLlavaProcessor.prompt_ids`: the chat
   template, then `<image>` expanded to the image's token count), and images are told apart by content.
2. Prompts that hold the same ids up to the end of their image tokens form a family; within it, one row per
   distinct image is prefilled up to the longest id prefix P all prompts of the batch share (capped so that
   every prompt keeps at least one token of its own): the vision module runs on those images only, and the LM
   fills a `transformers.DynamicCache`.
3. The cache rows are gathered to one row per prompt (`Cache.batch_select_indices`). Each prompt's own tokens
   (its suffix) are left-padded to the longest suffix of the batch and placed after the prefix:
   ``[prefix | pads | suffix]`` with attention mask ``[1.. | 0.. | 1..]``. `generate` continues from the cache:
   it feeds only the uncached tokens and derives position ids from the mask's cumulative sum, so every suffix
   token sits at the position it has in the unpadded prompt, and pads are never attended to.

Each token therefore attends to the same keys at the same positions as in a per-question forward; only the
floating-point summation order differs (first-step logits agree to ~1e-6 in float32, tested). Prompts that
cannot share (no image, or nothing after the image tokens, as in the `plain` template) take the left-padded
batched path, which is also `share_prefix=False`.

Batches hold whole images (all their prompts) up to ``batch_size`` prompts, images sorted by prompt length so
that suffix padding stays small; an image with more prompts than ``batch_size`` is prefilled once and decoded
in pieces of ``batch_size``.
"""
from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import DynamicCache

from ..conversation import Message, Template
from .loading import DEFAULT_TEMPLATE, to_model


@dataclass(frozen=True)
class SharedBatch:
    """Prompts decoded from one prefix prefill: ``images`` (distinct-image indices, one prefill row each),
    ``rows`` (prompt indices) and ``prefix_len`` (the ids every row shares)."""

    images: list[int]
    rows: list[int]
    prefix_len: int


@dataclass(frozen=True)
class Plan:
    shared: list[SharedBatch]
    padded: list[int]  # prompt indices that take the left-padded path


def image_groups(images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[int]]:
    """(distinct images, each input's index among them). Identical pixels make one image, so callers need not
    pass the same object for prompts about one picture."""
    distinct: list[Image.Image] = []
    seen: dict[tuple, int] = {}
    index = []
    for image in images:
        key = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key not in seen:
            seen[key] = len(distinct)
            distinct.append(image)
        index.append(seen[key])
    return distinct, index


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def plan_batches(prompts: Sequence[Sequence[int]], image_of: Sequence[int], image_token_id: int,
                 batch_size: int) -> Plan:
    """Group prompts into prefix-shared batches (see the module docstring); pure, so it is tested on its own."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    padded: list[int] = []
    families: dict[tuple[int, ...], dict[int, list[int]]] = {}  # head ids -> image -> prompt indices
    for index, ids in enumerate(prompts):
        image_positions = [i for i, t in enumerate(ids) if t == image_token_id]
        head = image_positions[-1] + 1 if image_positions else 0
        if not image_positions or head >= len(ids):
            padded.append(index)
            continue
        families.setdefault(tuple(ids[:head]), {}).setdefault(image_of[index], []).append(index)
    shared = []
    for groups in families.values():
        # Bucket by length: images in order of their longest prompt, each image's prompts shortest first.
        ordered = sorted(groups.items(), key=lambda item: max(len(prompts[i]) for i in item[1]))
        images: list[int] = []
        rows: list[int] = []
        for image, members in ordered:
            members = sorted(members, key=lambda i: len(prompts[i]))
            if rows and len(rows) + len(members) > batch_size:
                shared.append(_shared_batch(prompts, images, rows))
                images, rows = [], []
            images.append(image)
            rows += members
        if rows:
            shared.append(_shared_batch(prompts, images, rows))
    return Plan(shared, padded)


def _shared_batch(prompts: Sequence[Sequence[int]], images: list[int], rows: list[int]) -> SharedBatch:
    members = [prompts[i] for i in rows]
    prefix_len = min(_common_prefix_len(members), min(len(m) for m in members) - 1)
    return SharedBatch(images, rows, prefix_len)


def _prefill(model, prefix_ids: torch.Tensor, pixel_values: torch.Tensor) -> DynamicCache:
    """The shared prefix of each image (vision module included) into a cache; only the last logits are kept."""
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix_ids, pixel_values=pixel_values, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _suffix_inputs(rows: Sequence[Sequence[int]], prefix_len: int, pad_id: int, device) -> dict[str, torch.Tensor]:
    """``[prefix | pads | suffix]`` ids and their attention mask (0 on the pads only)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        suffix = row[prefix_len:]
        ids[i, :prefix_len] = torch.tensor(row[:prefix_len])
        ids[i, width - len(suffix):] = torch.tensor(suffix)
        mask[i, :prefix_len] = 1
        mask[i, width - len(suffix):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@dataclass
class Generated:
    """Per prompt, in input order: the new token ids (pads after an early stop included) and, when asked for,
    the logits of the first generated token."""

    tokens: list[torch.Tensor]
    first_logits: list[torch.Tensor] | None


@torch.inference_mode()
def generate_greedy(
    model,
    processor,
    images: Sequence[Image.Image],
    conversations: Sequence[list[Message]],
    *,
    template: Template = DEFAULT_TEMPLATE,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    share_prefix: bool = True,
    first_logits: bool = False,
) -> Generated:
    """Greedy continuations of conversations that end with a user turn, one image each (``images[i]`` goes with
    ``conversations[i]``); ``share_prefix=False`` is the plain left-padded batched path."""
    if len(images) != len(conversations):
        raise ValueError(f"{len(images)} images for {len(conversations)} conversations: pass one image per conversation")
    tokens: list[torch.Tensor | None] = [None] * len(conversations)
    logits: list[torch.Tensor | None] = [None] * len(conversations)
    pad_id = processor.tokenizer.pad_token_id
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                   return_dict_in_generate=True, output_logits=first_logits)

    def keep(rows: Sequence[int], out, prompt_len: int) -> None:
        for k, index in enumerate(rows):
            tokens[index] = out.sequences[k, prompt_len:]
            if first_logits:
                logits[index] = out.logits[0][k]

    if share_prefix:
        distinct, image_of = image_groups(images)
        prompts = processor.prompt_ids(conversations, template)
        plan = plan_batches(prompts, image_of, processor.image_token_id, batch_size)
        padded = plan.padded
        for batch in plan.shared:
            first_row = {image: next(r for r in batch.rows if image_of[r] == image) for image in batch.images}
            prefix = torch.tensor([prompts[first_row[image]][:batch.prefix_len] for image in batch.images])
            pixels = processor.preprocess_images([distinct[image] for image in batch.images])
            cache = _prefill(model, prefix.to(model.device), pixels.to(device=model.device, dtype=model.dtype))
            slot = {image: k for k, image in enumerate(batch.images)}
            pieces = [batch.rows[i:i + batch_size] for i in range(0, len(batch.rows), batch_size)]
            for piece in pieces:
                piece_cache = copy.deepcopy(cache) if len(pieces) > 1 else cache
                piece_cache.batch_select_indices(torch.tensor([slot[image_of[r]] for r in piece], device=model.device))
                inputs = _suffix_inputs([prompts[r] for r in piece], batch.prefix_len, pad_id, model.device)
                out = model.generate(**inputs, cache=piece_cache, **options)
                keep(piece, out, inputs["input_ids"].shape[1])
    else:
        padded = list(range(len(conversations)))
    for start in range(0, len(padded), batch_size):
        rows = padded[start:start + batch_size]
        inputs = processor.apply_chat_template([conversations[r] for r in rows], template=template, tokenize=True,
                                               images=[images[r] for r in rows], padding_side="left")
        inputs = to_model(inputs, model)
        out = model.generate(**inputs, **options)
        keep(rows, out, inputs["input_ids"].shape[1])
    return Generated(tokens, logits if first_logits else None)


def generate_replies(model, processor, images: Sequence[Image.Image], conversations: Sequence[list[Message]],
                     **options) -> list[str]:
    """The decoded, whitespace-stripped greedy replies of `generate_greedy` (same options): what every benchmark
    and the post-training evaluation score."""
    out = generate_greedy(model, processor, images, conversations, **options)
    return [t.strip() for t in processor.tokenizer.batch_decode([t.tolist() for t in out.tokens], skip_special_tokens=True)]
