"""Atomic writes: every file or directory the project writes for others to read appears whole or not at all.

A run killed mid-write (out of memory, Ctrl-C, a pre-empted node) must never leave a truncated checkpoint, a
half-written JSON summary or a `final/` missing its weights that a later `--resume` or reader takes for finished.
Each helper writes beside the target (same filesystem, so the rename is atomic) under a per-process temporary
name (concurrent writers never share one), then renames it into place. Light on purpose (no torch at import):
the evaluation CLIs use it too.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike) -> Path:
    """`.<name>.<pid>.tmp` next to `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` then rename `tmp` onto `path`; on any error the temporary file is removed and `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None, lines: bool | None = None) -> Path:
    """JSON (UTF-8, non-ASCII kept), or JSON lines for a list (`lines`; default: for `*.jsonl` names). The object
    is serialised before anything touches the disk."""
    if Path(path).suffix == ".jsonl" if lines is None else lines:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in obj)
    else:
        text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return atomic_write_text(path, text)


def save_safetensors_atomic(state: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` through a temporary file."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a fully written `tmp_dir` onto `final_dir`, replacing an older one. A directory cannot be renamed over
    a non-empty one, so the old copy is moved aside first and deleted last: at every instant `final_dir` is either
    the old complete directory, absent, or the new complete one -- never a mix."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = temporary_sibling(final_dir).with_suffix(".old")
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir
