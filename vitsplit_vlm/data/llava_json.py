"""LLaVA conversation JSON -> validated, tokenised, image-loading torch dataset.

A record is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}`` (JSON list or JSON
lines); ``image`` is one path relative to the image folder, absent/null for text-only rows.

Every record is checked up front (:func:`scan_records`) so a bad one is found before training starts, never
hours in: roles, empty answers, the ``<image>`` placeholder (exactly once, in the first human turn, iff the
record has an image), the image file (present and decodable) and, given a tokenizer, the length. Loading and
tokenisation go through ``datasets`` (Arrow, cached by fingerprint: a re-run with the same file, tokenizer and
settings re-uses the tokenised columns). The image check is never cached, because the fingerprint cannot see
image files change on disk.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vitsplit_vlm.conversation import (
    IMAGE_TOKEN,
    TEMPLATES,
    ConversationError,
    Template,
    expand_image_tokens,
    image_first,
    messages_from_llava,
    tokenize_conversation,
)
from vitsplit_vlm.errors import UserError
from vitsplit_vlm.models.tokenizer import token_id

logger = logging.getLogger(__name__)

_PREPARED = datasets.Features(
    {
        "record_id": datasets.Value("string"),
        "image": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "truncated": datasets.Value("bool"),
        "error": datasets.Value("string"),
    }
)


class DataFileError(UserError):
    """The data file itself is unusable (missing, malformed JSON, no records)."""


class BadRecordError(UserError):
    """One record cannot be trained on; names it so it can be fixed or dropped."""

    def __init__(self, record_id: str, reason: str, source: str | Path | None = None):
        self.record_id, self.reason = record_id, reason
        where = f" in {source}" if source else ""
        super().__init__(f"bad record {record_id}{where}: {reason}")


@dataclass(frozen=True)
class BadRecord:
    index: int
    record_id: str
    reason: str


@dataclass
class ScanResult:
    """Prepared rows (all of them, bad ones included) and what the scan found; counts are of good records."""

    prepared: datasets.Dataset
    bad: list[BadRecord]
    truncated: int
    text_only: int

    def summary(self, max_length: int | None = None) -> str:
        parts = [f"{len(self.prepared)} records", f"{len(self.bad)} bad", f"{self.text_only} text-only"]
        if max_length is not None:
            parts.append(f"{self.truncated} truncated to model_max_length={max_length}")
        return ", ".join(parts)


def load_llava_json(path: str | Path, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Load with ``datasets`` (Arrow cache); a malformed file is reported with its line and column, invalid UTF-8
    with its record index.

    The cache is keyed on the file's content (its SHA-256): ``datasets`` itself keys a local file on its path and
    modification time, so an edit that keeps both (a copy with ``cp -p``, a restore from backup) would be served
    stale.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such data file")
    base = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
    key = _content_key(path)
    try:
        ds = datasets.Dataset.from_json(str(path), cache_dir=str(base / "llava_json" / key))
    except Exception as err:  # pyarrow's message has a byte offset at best: locate the error with `json`
        raise DataFileError(_json_error(path) or f"{path}: cannot load as LLaVA JSON: {err.__cause__ or err}") from err
    if len(ds) == 0:
        raise DataFileError(f"{path}: no records")
    if "conversations" not in ds.column_names:
        one_object = len(ds) == 1 and _first_char(path) == "{"
        raise DataFileError(
            f"{path}: {'the file is one JSON object, not a list of records' if one_object else 'no record has conversations'}; "
            'a LLaVA data file is a JSON list [{"id": ..., "image": ..., "conversations": [...]}, ...] or JSON lines'
        )
    return ds


def _content_key(path: Path) -> str:
    """SHA-256 of the file, checking in the same pass that it is UTF-8 (``datasets`` would silently replace bad
    bytes in JSON lines); the first invalid byte is reported with the record that holds it."""
    digest, decoder, consumed = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            pending = len(decoder.getstate()[0])  # bytes of a character split across blocks, decoded with this one
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                raise DataFileError(_utf8_error(path, consumed - pending + err.start, err.reason)) from None
            consumed += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise DataFileError(_utf8_error(path, consumed - len(err.object) + err.start, err.reason)) from None
    return digest.hexdigest()


def _utf8_error(path: Path, offset: int, reason: str) -> str:
    data = path.read_bytes()
    index = _record_at(data.decode("utf-8", errors="replace"), len(data[:offset].decode("utf-8", errors="replace")))
    where = f"record {index}" if index is not None else f"byte {offset}"
    return f"{path}: {where} is not valid UTF-8 (byte {offset}: {reason}); save the file as UTF-8 or fix that record"


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1].decode("ascii", errors="replace")


def _json_error(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")  # UTF-8 already checked by _content_key
    try:
        if text.lstrip().startswith("["):
            json.loads(text)
        elif text.lstrip().startswith("{"):  # JSON lines
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as err:
                        return f"{path}: invalid JSON at line {lineno} column {err.colno}: {err.msg}"
        else:
            value = json.loads(text)
            return f"{path}: the file is a JSON {type(value).__name__}, not a list of records"
    except json.JSONDecodeError as err:
        return f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
    return None


def _record_at(text: str, offset: int) -> int | None:
    """Index of the record whose JSON text spans character `offset`: a JSON list's element, or a JSON-lines line."""
    stripped = text.lstrip()
    if not stripped.startswith("["):
        line = text.count("\n", 0, offset)
        return sum(1 for previous in text.splitlines()[:line] if previous.strip())
    decoder, index, pos = json.JSONDecoder(), 0, len(text) - len(stripped) + 1
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return None
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return index if offset >= pos else None
        if pos <= offset < end:
            return index
        index, pos = index + 1, end
    return None


def record_messages(row: Mapping[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    """A record's checked messages and image path (None: text-only), raising :class:`ConversationError`.

    The placeholder is moved to the start of the first human turn (``conversation.image_first``: ``"<image>\\n"
    + text``, or ``"<image>"`` alone, as LLaVA-1.5 trains), so the model sees one layout whichever end the source
    put it at; the renderer applies the same rule to any prompt.
    """
    image = row.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ConversationError("'image' must be one file path string (multi-image records are not supported)")
    messages = messages_from_llava(row.get("conversations"))
    for i, message in enumerate(messages[1:], 1):
        if IMAGE_TOKEN in message["content"]:
            raise ConversationError(f"{IMAGE_TOKEN} outside the first human turn (turn {i})")
    count = messages[0]["content"].count(IMAGE_TOKEN)
    if image is None:
        if count:
            raise ConversationError(f"{IMAGE_TOKEN} in a record without an image")
        return messages, None
    if count != 1:
        raise ConversationError(
            f"no {IMAGE_TOKEN} in the first human turn although an image is given" if count == 0
            else f"{IMAGE_TOKEN} appears {count} times in the first human turn; expected once"
        )
    messages[0] = {"role": "user", "content": image_first(messages[0]["content"])}
    return messages, image


def _prepare(
    row: Mapping[str, Any],
    index: int,
    tokenizer: PreTrainedTokenizerBase | None,
    template: Template,
    max_length: int | None,
    num_image_tokens: int,
) -> dict[str, Any]:
    rid = row.get("id")
    out = {"record_id": f"#{index}" if rid is None or rid == "" else str(rid), "image": None,
           "input_ids": [], "labels": [], "truncated": False, "error": ""}
    try:
        messages, out["image"] = record_messages(row)
        if tokenizer is not None:
            tok = tokenize_conversation(messages, tokenizer, template, max_length=max_length, num_image_tokens=num_image_tokens)
            out.update(input_ids=tok.input_ids, labels=tok.labels, truncated=tok.truncated)
    except ConversationError as err:
        out["error"] = str(err)
    return out


def _check_image(row: Mapping[str, Any], image_dir: Path) -> dict[str, str]:
    if row["error"] or row["image"] is None:
        return {"error": row["error"]}
    path = image_dir / row["image"]
    if not path.is_file():
        return {"error": f"image not found: {path}"}
    try:
        with Image.open(path) as image:
            image.load()  # decode fully: verify() misses truncated files
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the codec
        return {"error": f"corrupt image {path}: {err}"}
    return {"error": ""}


def scan_records(
    ds: datasets.Dataset,
    image_dir: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    template: Template = "vicuna_v1",
    max_length: int | None = None,
    num_image_tokens: int = 1,
    num_proc: int | None = None,
) -> ScanResult:
    """Check (and, given a tokenizer, tokenise) every record; the prepared rows carry ``error`` per record."""
    if template not in TEMPLATES:  # configuration errors fail once here, not once per record
        raise ValueError(f"unknown conversation template {template!r}; choose one of {TEMPLATES}")
    if tokenizer is not None and template == "chat_template" and not tokenizer.chat_template:
        raise ValueError("template 'chat_template' needs a tokenizer with a chat_template; use 'vicuna_v1' or 'plain'")
    prepared = ds.map(
        _prepare,
        with_indices=True,
        fn_kwargs=dict(tokenizer=tokenizer, template=template, max_length=max_length, num_image_tokens=num_image_tokens),
        remove_columns=ds.column_names,
        features=_PREPARED,
        num_proc=num_proc,
        desc="checking conversations",
    )
    prepared = prepared.map(
        _check_image, fn_kwargs=dict(image_dir=Path(image_dir)), num_proc=num_proc,
        load_from_cache_file=False, desc="checking images",
    )
    errors, ids, images, truncated = (prepared[c] for c in ("error", "record_id", "image", "truncated"))
    bad = [BadRecord(i, ids[i], e) for i, e in enumerate(errors) if e]
    text_only = sum(image is None and not error for image, error in zip(images, errors))
    return ScanResult(prepared, bad, truncated=sum(t and not e for t, e in zip(truncated, errors)), text_only=text_only)


@dataclass
class DataStats:
    """Counts to log at the start of training."""

    total: int
    skipped: int
    truncated: int
    text_only: int
    skipped_records: list[BadRecord] = field(repr=False, default_factory=list)


class LlavaDataset(torch.utils.data.Dataset):
    """Items ``{"input_ids", "labels"}`` (LongTensor, image tokens expanded) + ``"pixel_values"`` (C, H, W) for rows with an image.

    ``image_transform`` turns a list of PIL images (any mode, as opened) into N x C x H x W pixel values: the
    processor's ``preprocess_images``, so training decodes and resizes images exactly as chat and evaluation do. Bad records
    raise :class:`BadRecordError` here (the first one named, with the count of others), or with
    ``skip_bad_samples=True`` are dropped and counted in :attr:`stats`.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        image_transform: Callable[[list[Image.Image]], torch.Tensor],
        *,
        num_image_tokens: int,
        template: Template = "vicuna_v1",
        model_max_length: int = 2048,
        skip_bad_samples: bool = False,
        cache_dir: str | Path | None = None,
        num_proc: int | None = None,
    ):
        self.source = Path(json_path)
        self.image_dir = Path(image_dir)
        self.image_transform = image_transform
        self.num_image_tokens = num_image_tokens
        self.image_token_id = token_id(tokenizer, IMAGE_TOKEN)
        if self.image_token_id is None:
            raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token; add it with tokenizer.add_special_tokens")
        scan = scan_records(
            load_llava_json(json_path, cache_dir), image_dir, tokenizer=tokenizer, template=template,
            max_length=model_max_length, num_image_tokens=num_image_tokens, num_proc=num_proc,
        )
        if scan.bad and not skip_bad_samples:
            first = scan.bad[0]
            more = f" (and {len(scan.bad) - 1} more bad records)" if len(scan.bad) > 1 else ""
            raise BadRecordError(
                first.record_id,
                f"{first.reason}{more}; list them with `python -m vitsplit_vlm.data.check {json_path} --image-dir {image_dir}` "
                "or set skip_bad_samples: true",
                self.source,
            )
        if len(scan.bad) == len(scan.prepared):
            first = scan.bad[0]
            raise DataFileError(
                f"{json_path}: no usable record left: all {len(scan.bad)} records are bad (the first, "
                f"{first.record_id}: {first.reason}); list them with `python -m vitsplit_vlm.data.check {json_path} "
                f"--image-dir {image_dir}`"
            )
        bad_indices = {b.index for b in scan.bad}
        self.rows = scan.prepared.select([i for i in range(len(scan.prepared)) if i not in bad_indices])
        self.stats = DataStats(len(scan.prepared), len(scan.bad), scan.truncated, scan.text_only, scan.bad)
        logger.info("%s: %s", self.source, scan.summary(model_max_length))
        for b in scan.bad:
            logger.warning("skipping bad record %s: %s", b.record_id, b.reason)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def modality_lengths(self) -> list[int]:
        """Token lengths after expansion, negative for text-only rows (LLaVA's group_by_modality_length)."""
        extra = self.num_image_tokens - 1
        return [len(ids) + extra if image is not None else -len(ids) for ids, image in zip(self.rows["input_ids"], self.rows["image"])]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        ids, labels = expand_image_tokens(row["input_ids"], row["labels"], self.image_token_id, self.num_image_tokens)
        item = {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}
        if row["image"] is not None:
            path = self.image_dir / row["image"]
            try:
                with Image.open(path) as image:
                    image.load()  # decode now, inside the try: a file changed since the scan is named below
            except Exception as err:  # changed on disk since the scan: still name the record
                raise BadRecordError(row["record_id"], f"cannot read image {path}: {err}", self.source) from err
            item["pixel_values"] = self.image_transform([image])[0]
        return item
