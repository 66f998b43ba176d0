"""Processor: the tower's image processor + the LM's tokenizer + the chat templates of `vitsplit_vlm.conversation`.

Text carries `<image>` once per image; the processor tokenises it to one id and expands that id into
`num_image_tokens` copies (as Hugging Face Llava does), so the model finds one run of image ids per image.
Expansion happens on ids, not on text, so no tokenizer can merge the placeholder with its neighbours. Text is
tokenised by `vitsplit_vlm.conversation.encode_text` (each piece around `<image>` on its own, as LLaVA-1.5's
`tokenizer_image_token`), for raw text as for chat templates, so both give the ids training used.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin

from ..conversation import (
    IGNORE_INDEX, IMAGE_TOKEN, Template, encode_prompt, encode_text, expand_image_tokens, render_prompt,
)
from ..vision.towers import floors_patch_grid, patch_grid, vision_config_of
from .tokenizer import prepare_tokenizer, token_id

Messages = Sequence[Mapping[str, str]]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, the one decoding rule for training, chat and evaluation (they all go through the
    processor). Transparent pixels, whether from an alpha channel or a palette/colour-key `transparency`, are
    composited on white: a bare `convert("RGB")` keeps whatever colour they happen to store (often black), which
    is not what the image shows."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's `image_aspect_ratio=pad`: centre the image on a square of the mean colour, so the centre crop
    that follows keeps the whole image."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class VitSplitLlavaProcessor(ProcessorMixin):
    """`processor(text, images)` -> input_ids, attention_mask, pixel_values for `VitSplitLlavaForConditionalGeneration`.

    patch_size: the tower's patch size (tokens per image = ceil(H/p) * ceil(W/p) of the processed image).
    floor_grid: the tower drops partial patches (SigLIP: floor(H/p) * floor(W/p) tokens, 27 x 27 at 384 px), as the
    split module does for it; `from_components` sets it from the tower's config.
    pad_to_square: pad images to a square of the mean colour first (LLaVA-1.5's training recipe) instead of
    letting the centre crop cut the long side.
    padding_side: "left" so a batch can be generated from (the default), "right" for training.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 14,
        floor_grid: bool = False,
        pad_to_square: bool = False,
        padding_side: str = "left",
        **kwargs,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        self.patch_size, self.pad_to_square, self.padding_side = patch_size, pad_to_square, padding_side
        self.floor_grid = floor_grid
        super().__init__(image_processor, tokenizer, **kwargs)
        image_token_id = token_id(tokenizer, IMAGE_TOKEN)
        if image_token_id is None:
            raise ValueError(
                f"The tokenizer has no '{IMAGE_TOKEN}' token; add it with vitsplit_vlm.models.prepare_tokenizer (as "
                "from_components does) and resize the LM's embeddings to len(tokenizer)."
            )
        self.image_token_id: int = image_token_id

    @classmethod
    def from_components(cls, vision_path: str | Path, language_path: str | Path, **kwargs) -> "VitSplitLlavaProcessor":
        """From the same hand-downloaded checkpoints as `VitSplitLlavaForConditionalGeneration.from_components`,
        with the LM's tokenizer prepared the same way (`prepare_tokenizer`: `<image>` and a pad token added if
        missing), so its ids match that model's vocabulary."""
        vision = vision_config_of(AutoConfig.from_pretrained(vision_path))
        return cls(
            AutoImageProcessor.from_pretrained(vision_path), prepare_tokenizer(AutoTokenizer.from_pretrained(language_path)),
            patch_size=vision.patch_size, floor_grid=floors_patch_grid(vision), **kwargs,
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of processed images: the crop size when the image processor crops, else its resize size."""
        processor = self.image_processor
        size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
        if "height" not in size or "width" not in size:
            raise ValueError(
                f"{type(processor).__name__} resizes to {dict(size)} without a centre crop, so processed images have "
                "no fixed size and <image> no fixed token count: set do_center_crop with a crop_size, or a "
                "{'height': H, 'width': W} size, in its preprocessor_config.json."
            )
        return size["height"], size["width"]

    @property
    def num_image_tokens(self) -> int:
        """What one `<image>` expands to; equals `model.num_image_tokens` for the matching tower."""
        return self._tokens_for(*self.image_size)

    def _tokens_for(self, height: int, width: int) -> int:
        return math.prod(patch_grid(height, width, self.patch_size, self.floor_grid))

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """N x 3 x H x W pixel values for images of any size and mode (RGBA, grayscale, palette, 1x1, ...)."""
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"image {index} is a {type(image).__name__}, not a PIL image; open it with PIL.Image.open.")
        rgb = [to_rgb(image) for image in images]
        if self.pad_to_square:
            fill = tuple(round(255 * m) for m in self.image_processor.image_mean)
            rgb = [expand_to_square(image, fill) for image in rgb]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def __call__(
        self,
        text: str | Sequence[str],
        images: Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
        *,
        return_tensors: str = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """Tokenise `text` (one `<image>` per image, images in text order across the batch) and process `images`.

        `add_special_tokens` prepends bos when the tokenizer adds one to plain text. `truncation` cuts rows longer
        than `max_length` (default: the tokenizer's model_max_length) on the right and refuses to cut into image
        tokens. `padding` is as in `tokenizer.pad`.
        """
        texts = [text] if isinstance(text, str) else list(text)
        bos = self._leading_bos() if add_special_tokens else []
        ids = [bos + encode_text(self.tokenizer, t) for t in texts]
        return self._encode(ids, images, return_tensors, padding, padding_side, truncation, max_length)

    def _leading_bos(self) -> list[int]:
        """[bos] when the tokenizer starts plain text with it (as `tokenizer_image_token` keeps it), else []."""
        lead = self.tokenizer("", add_special_tokens=True)["input_ids"][:1]
        return lead if lead == [self.tokenizer.bos_token_id] else []

    def apply_chat_template(
        self,
        conversation: Messages | Sequence[Messages],
        template: Template = "vicuna_v1",
        tokenize: bool = False,
        images: Image.Image | Sequence[Image.Image] | None = None,
        **kwargs,
    ) -> str | list[str] | BatchFeature:
        """Prompt(s) for conversation(s) ending with a user turn, in `template` (plain, vicuna_v1, chat_template).

        tokenize=False: the prompt text. tokenize=True: model inputs as from `__call__` (kwargs go there), with
        the template's own bos rule (a chat template writes bos itself; `__call__` on its text would add another).
        """
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations = list(conversation) if batched else [conversation]
        if not tokenize:
            texts = [render_prompt(c, self.tokenizer, template) for c in conversations]
            return texts if batched else texts[0]
        ids = [encode_prompt(c, self.tokenizer, template) for c in conversations]
        options = dict(return_tensors="pt", padding=True, padding_side=None, truncation=False, max_length=None)
        options.update(kwargs)
        return self._encode(ids, images, **options)

    def prompt_ids(self, conversations: Sequence[Messages], template: Template = "vicuna_v1") -> list[list[int]]:
        """Unpadded ids of each prompt, `<image>` expanded to `num_image_tokens`: the rows `apply_chat_template(
        tokenize=True)` pads, without processing images (a caller that shares one image between prompts
        processes it once, with `preprocess_images`)."""
        return [self._expand(encode_prompt(c, self.tokenizer, template), self.num_image_tokens) for c in conversations]

    def _expand(self, ids: list[int], per_image: int) -> list[int]:
        return expand_image_tokens(ids, [IGNORE_INDEX] * len(ids), self.image_token_id, per_image)[0]

    def _encode(
        self,
        ids: list[list[int]],
        images: Image.Image | Sequence | None,
        return_tensors: str,
        padding: bool | str,
        padding_side: str | None,
        truncation: bool,
        max_length: int | None,
    ) -> BatchFeature:
        flat = _flatten_images(images)
        found = sum(row.count(self.image_token_id) for row in ids)
        if found != len(flat):
            raise ValueError(
                f"The text has {found} '{IMAGE_TOKEN}' placeholder(s) but {len(flat)} image(s) were given; put "
                f"'{IMAGE_TOKEN}' in the text exactly once per image, in the order the images are passed."
            )
        data = {}
        per_image = self.num_image_tokens
        if flat:
            data["pixel_values"] = self.preprocess_images(flat)
            per_image = self._tokens_for(*data["pixel_values"].shape[-2:])
        ids = [self._expand(row, per_image) for row in ids]
        if truncation:
            ids = self._truncate(ids, max_length or self.tokenizer.model_max_length)
        padded = self.tokenizer.pad(
            {"input_ids": ids}, padding=padding, max_length=max_length if padding == "max_length" else None,
            padding_side=padding_side or self.padding_side, return_tensors=return_tensors,
        )
        return BatchFeature({**padded, **data}, tensor_type=return_tensors)

    def _truncate(self, ids: list[list[int]], max_length: int) -> list[list[int]]:
        for index, row in enumerate(ids):
            kept, total = row[:max_length].count(self.image_token_id), row.count(self.image_token_id)
            if kept != total:
                raise ValueError(
                    f"Truncating sample {index} ({len(row)} tokens) to max_length={max_length} would cut its image "
                    f"tokens ({kept} of {total} kept); raise max_length or shorten the text."
                )
        return [row[:max_length] for row in ids]


def _flatten_images(images: Image.Image | Sequence | None) -> list[Image.Image]:
    """None, one image, a list of images, or one list per sample (a collator's layout) -> one flat list."""
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    return [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
