"""Console commands `vitsplit-eval-<benchmark>` (pyproject's [project.scripts]): the CLI of eval/<benchmark>.py, for an
installed package."""
from __future__ import annotations

from collections.abc import Sequence

from .cli import main


def vqav2(argv: Sequence[str] | None = None) -> int:
    return main("vqav2", argv)


def gqa(argv: Sequence[str] | None = None) -> int:
    return main("gqa", argv)
