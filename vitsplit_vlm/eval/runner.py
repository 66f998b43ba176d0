"""Model-agnostic evaluation loop: chunk, skip what is done, answer in batches, append to JSONL, merge.

Why separate from the model: everything here (resuming, sharding, merging, error handling) is tested with a
fake answerer in milliseconds; the model only enters through an ``Answerer`` callable.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .io import EvalInputError, JsonlAppender, atomic_write_json, load_json, read_jsonl, select_chunk

QuestionId = int | str
# (images, prompts) -> one raw answer string per item. A prompt is the user turn's text after the image (question,
# options, instruction): every benchmark is answered through this one seam.
# Images come decoded in the file's own mode; the processor's to_rgb turns them into RGB, as in training and chat.
Answerer = Callable[[list[Image.Image], list[str]], list[str]]

ANSWERS_SUBDIR = "answers"
RUN_CONFIG_NAME = "run_config.json"


@dataclass(frozen=True)
class EvalItem:
    """One question to answer: ``image`` is a file or the encoded bytes of an image embedded in the question file
    (MMBench's TSV); ``prompt`` is the text shown after the image, composed by the benchmark."""

    question_id: QuestionId
    image: Path | bytes
    prompt: str


def image_path(image_dir: Path, name_format: str, **fields: object) -> Path:
    """``image_dir / name_format.format(**fields)``, with a clear error for a format using unknown fields."""
    try:
        return Path(image_dir) / name_format.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise EvalInputError(f"--image-name-format {name_format!r} is invalid ({e!r}); it may use "
                             f"{', '.join('{' + k + '}' for k in fields)}.") from e


def chunk_file(output_dir: Path, num_chunks: int, chunk_idx: int) -> Path:
    return Path(output_dir) / ANSWERS_SUBDIR / f"chunk-{chunk_idx:03d}-of-{num_chunks:03d}.jsonl"


def load_answers(output_dir: Path) -> dict[QuestionId, str]:
    """Raw answers from every chunk file under ``output_dir`` (any chunk count), first answer per id wins.

    Reading all files, not just this chunk's, lets a run resume with a different number of processes."""
    answers: dict[QuestionId, str] = {}
    for path in sorted((Path(output_dir) / ANSWERS_SUBDIR).glob("*.jsonl")):
        for lineno, rec in enumerate(read_jsonl(path), start=1):
            if "question_id" not in rec or not isinstance(rec.get("answer"), str):
                raise EvalInputError(f"{path}: record {lineno} lacks 'question_id' or a str 'answer'. "
                                     "Delete that line (its question will be re-run).")
            answers.setdefault(rec["question_id"], rec["answer"])
    return answers


def check_run_config(output_dir: Path, config: dict) -> bool:
    """Refuse to resume into an output dir answered with other settings (model, prompt, ...), which would
    silently mix two runs. Returns whether the settings are already recorded."""
    path = Path(output_dir) / RUN_CONFIG_NAME
    if not path.exists():
        return False
    old = load_json(path, "run config")
    changed = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
    if changed:
        raise EvalInputError(f"{output_dir} holds answers made with other settings {changed} (old, new). "
                             "Use a fresh --output-dir, or delete it to start over.")
    return True


def check_images(items: Sequence[EvalItem], hint: str) -> None:
    """Fail before any model work if images are missing, listing a few so the naming problem is obvious."""
    missing = [str(it.image) for it in items if isinstance(it.image, Path) and not it.image.is_file()]
    if missing:
        raise EvalInputError(f"{len(missing)} of {len(items)} images not found (e.g. {missing[:3]}). {hint}")


def _load_images(items: Sequence[EvalItem]) -> list[Image.Image]:
    """One image per item; an image several items share is read once."""
    loaded: dict[Path | bytes, Image.Image] = {}
    for it in items:
        if it.image in loaded:
            continue
        try:
            with Image.open(io.BytesIO(it.image) if isinstance(it.image, bytes) else it.image) as im:
                im.load()  # decoded here; the processor's to_rgb turns any mode into RGB, as in training and chat
                loaded[it.image] = im
        except (OSError, UnidentifiedImageError) as e:
            where = "the embedded image" if isinstance(it.image, bytes) else f"image {it.image}"
            raise EvalInputError(f"cannot read {where} for question {it.question_id!r} ({e}). "
                                 "Replace the file; finished answers are kept and the run resumes.") from e
    return [loaded[it.image] for it in items]


def by_image(items: Sequence[EvalItem]) -> list[list[EvalItem]]:
    """The items grouped by image, groups in order of first appearance (items keep their order within)."""
    groups: dict[Path | bytes, list[EvalItem]] = {}
    for it in items:
        groups.setdefault(it.image, []).append(it)
    return list(groups.values())


def image_batches(items: Sequence[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Whole images per batch, up to ``batch_size`` questions, so each image's vision pass and prompt prefix is
    computed once (`generate_replies`); an image with more questions is a batch of its own, which the answerer
    decodes in pieces from that one prefix."""
    batches: list[list[EvalItem]] = []
    for group in by_image(items):
        if batches and len(batches[-1]) + len(group) <= batch_size:
            batches[-1] += group
        else:
            batches.append(list(group))
    return batches


def run_chunk(
    items: Sequence[EvalItem],
    make_answerer: Callable[[], Answerer],
    output_dir: Path,
    num_chunks: int,
    chunk_idx: int,
    batch_size: int,
    run_config: dict,
    image_hint: str = "Check --image-dir and --image-name-format.",
    progress: bool = True,
) -> int:
    """Answer this chunk's questions that no chunk file has answered yet; returns how many were answered.

    Chunks split the images (near-equal image counts, contiguous in order of first appearance), so all questions
    about an image are answered by one process, in one batch (`image_batches`).

    The model is only built (``make_answerer``) when there is work; images of the next batch load in a
    background thread while the current batch generates. ``run_config`` (model, prompt, ...) is recorded with
    the first answers and checked on every resume."""
    if batch_size < 1:
        raise EvalInputError(f"--batch-size must be >= 1, got {batch_size}.")
    recorded = check_run_config(output_dir, run_config)
    mine = [it for group in select_chunk(by_image(items), num_chunks, chunk_idx) for it in group]
    done = load_answers(output_dir)
    todo = [it for it in mine if it.question_id not in done]
    if not todo:
        return 0
    check_images(todo, image_hint)
    answerer = make_answerer()
    if not recorded:
        atomic_write_json(Path(output_dir) / RUN_CONFIG_NAME, run_config)
    batches = image_batches(todo, batch_size)
    with (
        JsonlAppender(chunk_file(output_dir, num_chunks, chunk_idx)) as out,
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"chunk {chunk_idx}/{num_chunks}",
             unit="q", disable=not progress) as bar,
    ):
        next_images = pool.submit(_load_images, batches[0])
        for i, batch in enumerate(batches):
            images = next_images.result()
            if i + 1 < len(batches):
                next_images = pool.submit(_load_images, batches[i + 1])
            answers = answerer(images, [it.prompt for it in batch])
            if len(answers) != len(batch) or not all(isinstance(a, str) for a in answers):
                raise RuntimeError(f"answerer returned {answers!r:.200} for {len(batch)} questions; "
                                   "it must return one str per question")
            out.write({"question_id": it.question_id, "answer": a} for it, a in zip(batch, answers))
            bar.update(len(batch))
    return len(todo)


def collect_answers(output_dir: Path, items: Sequence[EvalItem]) -> tuple[dict[QuestionId, str], list[QuestionId]]:
    """(raw answers of the answered items in item order, ids of the items no chunk has answered yet)."""
    done = load_answers(output_dir)
    answers = {it.question_id: done[it.question_id] for it in items if it.question_id in done}
    return answers, [it.question_id for it in items if it.question_id not in done]
