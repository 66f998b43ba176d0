"""Batching for :class:`~vitsplit_vlm.data.llava_json.LlavaDataset` items (training: right padding)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from vitsplit_vlm.conversation import IGNORE_INDEX


@dataclass
class LlavaCollator:
    """Pad a list of items into a batch the model's ``forward`` takes as keyword arguments.

    Returns ``input_ids`` (B, L) right-padded with the tokenizer's pad id, ``labels`` (B, L) padded with
    IGNORE_INDEX, ``attention_mask`` (B, L) 1 on real tokens, and -- only if some row has an image --
    ``pixel_values`` (num_images, C, H, W): the images of the rows that have one, in batch order.

    Mixed batches need no extra key: row r's image-token positions (``input_ids == image_token_id``) take
    the next image in ``pixel_values``, exactly as Hugging Face Llava fills them (masked_scatter in row-major
    order); a text-only row has no image tokens. The attention mask comes from lengths, not from
    ``input_ids != pad``, because tokenizers may share the pad id with eos or unk.
    """

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before batching")

    def __call__(self, items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(item["input_ids"]) for item in items]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (item, n) in enumerate(zip(items, lengths)):
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [item["pixel_values"] for item in items if "pixel_values" in item]
        if images:
            shapes = {tuple(image.shape) for image in images}
            if len(shapes) > 1:
                raise ValueError(f"images in one batch must share a shape to be stacked, got {sorted(shapes)}; "
                                 "use an image processor with a fixed crop/resize size")
            batch["pixel_values"] = torch.stack(images)
        return batch
