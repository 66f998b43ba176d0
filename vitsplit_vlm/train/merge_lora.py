"""Merge a LoRA stage's adapter into its base model; save one model in Hugging Face format (+ processor).

    vitsplit-merge-lora --model OUT/stage2/base_model --adapter OUT/stage2/final --out OUT/merged
    python scripts/merge_lora.py ...                                                 # the same, from a clone

The adapter's LoRA deltas are added into the LM weights and the fully trained projector/heads it carries replace
the base model's (peft's `merge_and_unload`); the result loads with `VitSplitLlavaForConditionalGeneration
.from_pretrained(OUT/merged)` and needs no peft.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import run_cli
from .lora import merge_lora_dirs


def main(argv: list[str] | None = None) -> int:
    """The CLI: a directory that is not a base model / adapter prints one line and exits 2."""
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="base model dir (a LoRA stage's base_model/)")
    parser.add_argument("--adapter", type=Path, required=True, help="adapter dir (a LoRA stage's final/)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged model")
    args = parser.parse_args(argv)
    merge_lora_dirs(args.model, args.adapter, args.out)
    print(f"merged {args.adapter} into {args.model} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
