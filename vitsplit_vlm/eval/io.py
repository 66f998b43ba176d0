"""File helpers shared by the benchmarks.

Why: evaluations run for hours on many processes. Per-question results are appended to JSONL files so a killed
run resumes where it stopped, final files are written atomically so a crash never leaves a half-written
submission, and chunking is deterministic so every rank agrees on who answers what.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..atomic import atomic_write_json  # noqa: F401  (the evaluation's final files are written with it)

T = TypeVar("T")


class EvalInputError(ValueError):
    """A user-supplied file or record is unusable; the message names it and says what to do."""


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning 'missing' and 'not JSON' into errors that name the file and its role."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} not found: {path}. Check the path.")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{what} {path} is not valid JSON ({e}). Re-download or regenerate it.") from e


def load_jsonl(path: str | os.PathLike, what: str) -> list[dict]:
    """Read an input JSON-lines file (LLaVA's question and answer files); any bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{what} not found: {path}. Check the path.")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{what} {path}:{lineno} is not valid JSON ({e}). Fix or regenerate the file.") from e
        if not isinstance(rec, dict):
            raise EvalInputError(f"{what} {path}:{lineno} is not a JSON object. Fix or regenerate the file.")
        records.append(rec)
    return records


def load_prediction_list(path: str | os.PathLike, what: str, id_key: str, id_type: type, answer_key: str) -> dict:
    """An official predictions file ``[{id_key: id, answer_key: str}, ...]`` -> {id: answer}, one per question."""
    schema = f'{{"{id_key}": {id_type.__name__}, "{answer_key}": str}}'
    data = load_json(path, what)
    if not isinstance(data, list):
        raise EvalInputError(f"{what} {path} must be a JSON list of {schema}, got {type(data).__name__}.")
    preds: dict = {}
    for i, r in enumerate(data):
        # type() rather than isinstance(): JSON's true/false must not pass as integer ids.
        if not (isinstance(r, dict) and type(r.get(id_key)) is id_type and isinstance(r.get(answer_key), str)):
            raise EvalInputError(f"{what} {path}: record [{i}] must be {schema}, got {r!r:.200}.")
        if r[id_key] in preds:
            raise EvalInputError(f"{what} {path}: {id_key} {r[id_key]!r} is answered twice (record [{i}]). "
                                 f"Keep one {answer_key} per question.")
        preds[r[id_key]] = r[answer_key]
    return preds




def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSONL records. A last line without a newline is an append still in flight (another rank) or cut off
    by a crash, so it is skipped; any other bad line is an error naming the file and line."""
    path = Path(path)
    data = path.read_text(encoding="utf-8")
    lines = data.split("\n")
    complete = lines[:-1]  # lines[-1] is "" when the file ends with a newline, else the unfinished line
    records = []
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(
                f"{path}:{lineno} is not valid JSON ({e}). Delete that line (its question will be re-run)."
            ) from e
        if not isinstance(rec, dict):
            raise EvalInputError(f"{path}:{lineno} is not a JSON object. Delete that line.")
        records.append(rec)
    return records


class JsonlAppender:
    """Append-only JSONL writer; each batch is flushed and fsynced so a kill loses at most the batch in flight."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        self._f = self.path.open("a", encoding="utf-8")

    def _drop_partial_tail(self) -> None:
        """Cut a line left unfinished by a crash, so the next record starts on its own line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_chunk(
    num_chunks: int | None, chunk_idx: int | None, env: Mapping[str, str] = os.environ
) -> tuple[int, int]:
    """(num_chunks, chunk_idx) from the flags, falling back to torchrun / accelerate's WORLD_SIZE / RANK."""
    if num_chunks is None:
        num_chunks = int(env.get("WORLD_SIZE", "1"))
    if chunk_idx is None:
        chunk_idx = int(env.get("RANK", "0"))
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise EvalInputError(
            f"chunk index {chunk_idx} is not in [0, {num_chunks}); pass --chunk-idx between 0 and --num-chunks - 1."
        )
    return num_chunks, chunk_idx


def select_chunk(items: Sequence[T], num_chunks: int, chunk_idx: int) -> list[T]:
    """Contiguous, near-equal split (sizes differ by at most one) so the chunks partition the items exactly."""
    n = len(items)
    return list(items[chunk_idx * n // num_chunks : (chunk_idx + 1) * n // num_chunks])


def check_prediction_ids(
    pred_ids: Iterable[int | str], wanted: Iterable[int | str], known: Iterable[int | str], source: str, hint: str
) -> None:
    """Every prediction must be for a known question and every wanted question must have one."""
    pred_ids, wanted, known = set(pred_ids), list(wanted), set(known)
    unknown = sorted(pred_ids - known, key=str)
    if unknown:
        raise EvalInputError(f"{source}: {len(unknown)} prediction(s) for question ids not in the ground truth "
                             f"(e.g. {unknown[:5]}). Score against the matching question/annotation file.")
    missing = [q for q in wanted if q not in pred_ids]
    if missing:
        raise EvalInputError(f"{source}: {len(missing)} of {len(wanted)} questions have no prediction "
                             f"(e.g. {missing[:5]}). {hint}")
