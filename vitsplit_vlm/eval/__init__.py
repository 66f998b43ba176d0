"""Benchmarks of LLaVA-1.5's table: official file formats, LLaVA-1.5 prompts, official scoring, and one resumable,
sharded run / merge / score driver (``cli``) around one model seam (``runner.Answerer``).

Adding a benchmark: one module here defining ``BENCHMARK`` (a ``cli.Benchmark``) and one line in ``BENCHMARKS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .io import EvalInputError

if TYPE_CHECKING:
    from .cli import Benchmark

# name (as in eval/<name>.py and `python -m vitsplit_vlm.eval <name>`) -> module of this package defining BENCHMARK
BENCHMARKS: dict[str, str] = {
    "vqav2": "vqav2",
    "gqa": "gqa",
    "vizwiz": "vizwiz",
    "pope": "pope",
    "mmbench": "mmbench",
    "scienceqa": "scienceqa",
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``, its module imported on demand."""
    if name not in BENCHMARKS:
        raise EvalInputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}.")
    return importlib.import_module(f".{BENCHMARKS[name]}", __name__).BENCHMARK


__all__ = ["BENCHMARKS", "EvalInputError", "get_benchmark"]
