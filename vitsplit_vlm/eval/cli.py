"""The ``run`` / ``merge`` / ``score`` / ``miniset`` command line shared by every benchmark (``eval/<name>.py`` or
``python -m vitsplit_vlm.eval <name>``).

Why one driver: benchmarks differ only in file formats, prompts and metrics (a ``Benchmark``); the resumable,
sharded generation flow and its error handling must behave identically for all of them.

* ``run``     answers this process's chunk (``--num-chunks/--chunk-idx``, else torchrun's WORLD_SIZE/RANK), appending
              to ``<output-dir>/answers/*.jsonl``; whichever process finds every question answered merges.
* ``merge``   writes the official-format file and ``summary.json`` from finished chunk files.
* ``score``   scores an existing official-format predictions file, no model needed.
* ``miniset`` writes the benchmark's seeded mini-set in its official format and prints the ``run`` arguments for it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .io import EvalInputError, atomic_write_json, resolve_chunk
from .runner import ANSWERS_SUBDIR, EvalItem, QuestionId, collect_answers, run_chunk

SUMMARY_NAME = "summary.json"
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQAv2 / GQA / POPE instruction
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."  # ScienceQA / MMBench


@dataclass(frozen=True)
class Benchmark:
    """What differs between benchmarks; each module under vitsplit_vlm/eval/ defines one as ``BENCHMARK``."""

    name: str
    final_file: str  # official-format output written into --output-dir by merge
    # --image-name-format default; None when the question file embeds the images (no --image-dir).
    default_image_name_format: str | None
    default_instruction: str  # --instruction default: LLaVA-1.5's answer-format line for this benchmark
    # (subcommand, parser): add benchmark-specific options.
    add_args: Callable[[str, argparse.ArgumentParser], None]
    # args -> items in question-file order (image paths need not exist for merge).
    load_items: Callable[[argparse.Namespace], list[EvalItem]]
    # (args, raw answers in item order) -> (official-format records, metrics or None without ground truth).
    finalize: Callable[[argparse.Namespace, dict[QuestionId, str]], tuple[list[dict], dict | None]]
    # args -> (metrics, description of the inputs for the summary).
    score_file: Callable[[argparse.Namespace], tuple[dict, dict]]
    # (directory, seed) -> the `run` arguments (besides --model-path / --output-dir) that evaluate the mini-set.
    write_miniset: Callable[[Path, int], list[str]]


def with_instruction(text: str, instruction: str) -> str:
    """LLaVA-1.5's prompt layout: the question (and options), then the answer-format line on its own line."""
    return f"{text}\n{instruction}" if instruction else text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser(bench: Benchmark) -> argparse.ArgumentParser:
    doc = sys.modules[bench.load_items.__module__].__doc__
    parser = argparse.ArgumentParser(prog=f"eval/{bench.name}.py", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate answers (resumable, shardable), then merge and score when complete")
    merge = sub.add_parser("merge", help="merge finished chunk files into the official-format file and score")
    score = sub.add_parser("score", help="score an existing official-format predictions file")
    miniset = sub.add_parser("miniset", help="write the seeded mini-set (official format) for tests and smoke runs")
    miniset.add_argument("--out", type=Path, required=True, help="directory to write it into")
    miniset.add_argument("--seed", type=int, default=0)
    for p in (run, merge):
        p.add_argument("--question-file", type=Path, required=True)
        p.add_argument("--output-dir", type=Path, required=True)
        p.add_argument("--limit", type=positive_int, default=None, help="only the first N questions (smoke runs)")
    run.add_argument("--model-path", type=Path, required=True)
    if bench.default_image_name_format is not None:
        run.add_argument("--image-dir", type=Path, required=True)
        run.add_argument("--image-name-format", default=bench.default_image_name_format,
                         help="file name of an image inside --image-dir (default: %(default)s)")
    run.add_argument("--instruction", default=bench.default_instruction,
                     help="answer-format line after the question (default: LLaVA-1.5's, %(default)r)")
    run.add_argument("--template", default=None, help="chat template (default: the checkpoint's "
                     "config.conversation_template, else vicuna_v1)")
    run.add_argument("--batch-size", type=positive_int, default=8,
                     help="questions decoded at once (default: %(default)s); a batch holds whole images, whose "
                     "questions share one vision pass and prompt prefix")
    run.add_argument("--max-new-tokens", type=positive_int, default=16)
    run.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK when CUDA is available, else cpu")
    run.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="auto: bfloat16 on CUDA, float32 on CPU")
    run.add_argument("--num-chunks", type=int, default=None, help="default: $WORLD_SIZE or 1")
    run.add_argument("--chunk-idx", type=int, default=None, help="default: $RANK or 0")
    run.add_argument("--no-progress", action="store_true")
    score.add_argument("--predictions", type=Path, required=True, help=f"official-format file, e.g. {bench.final_file}")
    score.add_argument("--summary-file", type=Path, default=None,
                       help="default: <predictions without its extension>.summary.json next to it")
    for name, p in (("run", run), ("merge", merge), ("score", score)):
        bench.add_args(name, p)
    return parser


def _items(bench: Benchmark, args: argparse.Namespace) -> list[EvalItem]:
    items = bench.load_items(args)
    if not items:  # a score over nothing would read as 0.0
        raise EvalInputError(f"{args.question_file} holds no {bench.name} questions to evaluate; pass the "
                             "benchmark's question file (`miniset --out DIR` writes a small one).")
    return items if args.limit is None else items[: args.limit]


def _finish(bench: Benchmark, args: argparse.Namespace, answers: dict[QuestionId, str]) -> dict:
    """Write the official-format file and the summary (atomically, after all checks passed)."""
    records, metrics = bench.finalize(args, answers)
    final = atomic_write_json(args.output_dir / bench.final_file, records)
    summary = {"benchmark": bench.name, "question_file": str(args.question_file), "predictions_file": str(final),
               "num_predictions": len(records), "metrics": metrics}
    atomic_write_json(args.output_dir / SUMMARY_NAME, summary)
    return summary


def cmd_run(bench: Benchmark, args: argparse.Namespace, make_answerer: Callable | None = None) -> dict | None:
    """Answer this chunk; merge if every question is now answered. Returns the summary when merged."""
    num_chunks, chunk_idx = resolve_chunk(args.num_chunks, args.chunk_idx)
    items = _items(bench, args)
    run_config = {"benchmark": bench.name, "model_path": str(args.model_path.resolve()),
                  "instruction": args.instruction, "template": args.template, "max_new_tokens": args.max_new_tokens}
    if make_answerer is None:
        from .generation import load_answerer  # torch / transformers only when a model is needed

        def make_answerer():
            return load_answerer(args.model_path, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 template=args.template, device=args.device, dtype=args.dtype)

    hint = (f"Check --image-dir {args.image_dir} and --image-name-format {args.image_name_format!r}."
            if bench.default_image_name_format is not None else f"Check {args.question_file}.")
    run_chunk(items, make_answerer, args.output_dir, num_chunks, chunk_idx, args.batch_size, run_config,
              image_hint=hint, progress=not args.no_progress)
    answers, pending = collect_answers(args.output_dir, items)
    if pending:
        print(f"chunk {chunk_idx}/{num_chunks} done; {len(pending)} questions left to other chunks. The last chunk "
              "to finish merges (or run `merge`).", file=sys.stderr)
        return None
    return _finish(bench, args, answers)


def cmd_merge(bench: Benchmark, args: argparse.Namespace) -> dict:
    items = _items(bench, args)
    answers, pending = collect_answers(args.output_dir, items)
    if pending:
        raise EvalInputError(
            f"{len(pending)} of {len(items)} questions are not answered yet in {args.output_dir / ANSWERS_SUBDIR} "
            f"(e.g. {pending[:5]}). Run the remaining chunks (re-running resumes); the last one to finish merges."
        )
    return _finish(bench, args, answers)


def cmd_score(bench: Benchmark, args: argparse.Namespace) -> dict:
    metrics, inputs = bench.score_file(args)
    summary = {"benchmark": bench.name, "predictions_file": str(args.predictions), **inputs, "metrics": metrics}
    out = args.summary_file or args.predictions.with_name(f"{args.predictions.stem}.summary.json")
    atomic_write_json(out, summary)
    return summary


def cmd_miniset(bench: Benchmark, args: argparse.Namespace) -> None:
    run_args = bench.write_miniset(args.out, args.seed)
    print(shlex.join(["python", f"eval/{bench.name}.py", "run", "--model-path", "CKPT", *run_args, "--output-dir",
                      str(args.out / "run")]))


def main(bench: Benchmark | str, argv: Sequence[str] | None = None, make_answerer: Callable | None = None) -> int:
    """Entry point of eval/<bench>.py (``bench``: a Benchmark or a registered name); user errors print one clear
    line and exit 2 instead of a traceback. ``make_answerer`` replaces the model (tests)."""
    from . import get_benchmark

    try:
        bench = get_benchmark(bench) if isinstance(bench, str) else bench
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = build_parser(bench).parse_args(argv)
    try:
        if args.command == "miniset":
            cmd_miniset(bench, args)
            return 0
        if args.command == "run":
            summary = cmd_run(bench, args, make_answerer)
        elif args.command == "merge":
            summary = cmd_merge(bench, args)
        else:
            summary = cmd_score(bench, args)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
