"""List every bad record of a LLaVA JSON file before training on it.

    python -m vitsplit_vlm.data.check FILE --image-dir D [--tokenizer DIR --max-length N --num-image-tokens K]

Prints ``bad record <id> (#<index>): <reason>`` per bad record, then a summary. Exit code 0 if all records
are usable, 1 if any is bad, 2 if the file itself cannot be read. With a tokenizer the length check runs too:
records truncated to ``--max-length`` are counted; ones whose image tokens would be cut are bad. The tokenizer is
prepared as training prepares it (``prepare_tokenizer``), so an LM's tokenizer as downloaded counts ``<image>`` as one token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

from vitsplit_vlm.config import ConfigError
from vitsplit_vlm.conversation import TEMPLATES
from vitsplit_vlm.data.llava_json import load_llava_json, scan_records
from vitsplit_vlm.errors import run_cli
from vitsplit_vlm.models import prepare_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitsplit_vlm.data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="LLaVA conversation JSON (list or JSON lines)")
    parser.add_argument("--image-dir", required=True, help="folder the records' 'image' paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer directory (e.g. the LM's, as downloaded); enables the length check")
    parser.add_argument("--max-length", type=int, help="model_max_length (with --tokenizer)")
    parser.add_argument("--num-image-tokens", type=int, help="visual tokens per image in the model (with --tokenizer)")
    parser.add_argument("--template", default="vicuna_v1", choices=TEMPLATES)
    parser.add_argument("--num-proc", type=int, default=None, help="worker processes for the scan")
    args = parser.parse_args(argv)
    if (args.tokenizer is None) != (args.max_length is None) or (args.tokenizer is None) != (args.num_image_tokens is None):
        parser.error("the length check needs all of --tokenizer, --max-length and --num-image-tokens")

    return run_cli(lambda: _check(args))


def _check(args: argparse.Namespace) -> int:
    if args.tokenizer and not Path(args.tokenizer).is_dir():  # a hub repo id would be tried online
        raise ConfigError(f"--tokenizer {args.tokenizer}: no such directory; pass the tokenizer's (or the LM's) local directory")
    ds = load_llava_json(args.file)
    tokenizer = None
    if args.tokenizer:
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True))
    scan = scan_records(ds, args.image_dir, tokenizer=tokenizer, template=args.template, max_length=args.max_length,
                        num_image_tokens=args.num_image_tokens or 1, num_proc=args.num_proc)
    for bad in scan.bad:
        print(f"bad record {bad.record_id} (#{bad.index}): {bad.reason}")
    print(f"{args.file}: {scan.summary(args.max_length)}")
    return 1 if scan.bad else 0


if __name__ == "__main__":
    sys.exit(main())
