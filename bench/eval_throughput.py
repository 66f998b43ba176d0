"""Evaluation throughput: one question at a time vs batched vs prefix-shared generation, side by side; chat
time-to-first-token with and without the session's cache.

Same model (random weights, a CLIP-shaped tower at 336 px = 576 image tokens, Vicuna template), same questions,
greedy, in one process:

  (a) one-at-a-time  `generate_greedy(batch_size=1, share_prefix=False)`: LLaVA's evaluation loop
  (b) batched        `generate_greedy(share_prefix=False)`: left-padded batches, one vision pass per question
  (c) prefix-shared  `generate_greedy()`: one vision pass and one prefix prefill per image

Question sets: VQAv2 val's 5.3 questions per image (images with 5 or 6 questions, mean 16/3) and POPE's 6 per
image and split; LMs: the test-size tiny Llama and a wide one (2048 wide, 2 layers). The answers of (a), (b),
(c) must be identical; the run fails otherwise.

    python bench/eval_throughput.py                        # CPU, a few minutes on 2 cores
    python bench/eval_throughput.py --device cuda --images 60 --batch-size 32 --json eval_throughput.json
    python bench/eval_throughput.py --smoke                # tiny, one process: checks, not figures
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from vitsplit_vlm.chat import ChatModel, ChatSession, GenerationSettings
from vitsplit_vlm.eval.generation import image_prompt_messages
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
from vitsplit_vlm.models.generation import generate_greedy
from vitsplit_vlm.peak_memory import peak_mib
from vitsplit_vlm.tiny import PATCH_SIZE, SIZES, build_tokenizer
from vitsplit_vlm.vision import split_preset

MODES = {
    "one-at-a-time": dict(batch_size=1, share_prefix=False),
    "batched": dict(share_prefix=False),
    "prefix-shared": dict(share_prefix=True),
}
LMS = {
    "tiny": SIZES["test"]["text"],
    "wide": dict(hidden_size=2048, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=5504),
}
# (name, questions per image, cycled over the images): VQAv2 val averages 5.3 per image, POPE asks 6 per split.
QUESTION_SETS = {"vqav2-val": [5, 5, 6], "pope": [6]}
QUESTIONS = [
    "what colour is the circle",
    "is there a red square in the image",
    "how many objects are there",
    "what shape is on the left side of the picture next to the big blue star",
    "is this a photo",
    "which object is the largest one in the middle of the image",
]
INSTRUCTION = "Answer the question using a single word or phrase."


def build_checkpoint(out: Path, lm: str, image_size: int) -> Path:
    """A random VitSplitLlava (tiny CLIP-shaped tower, `lm` shape) saved with its processor, as training writes it."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(out / "llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, **LMS[lm])).save_pretrained(out / "llama")
    vision = dict(SIZES["test"]["vision"], image_size=image_size, patch_size=PATCH_SIZE)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(out / "clip")
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(out / "clip")
    model = VitSplitLlavaForConditionalGeneration.from_components(out / "clip", out / "llama", split_preset("clip-l-vlm"))
    with torch.no_grad():  # loud visual tokens, so that answers depend on the image
        for p in model.projector.parameters():
            p.mul_(10)
    # Never end early: every mode then generates exactly max_new_tokens per question (and chat replies are non-empty).
    model.generation_config = GenerationConfig(suppress_tokens=sorted(set(tokenizer.all_special_ids)))
    model.save_pretrained(out / "vlm")
    VitSplitLlavaProcessor.from_components(out / "clip", out / "llama").save_pretrained(out / "vlm")
    return out / "vlm"


def question_set(name: str, num_images: int) -> tuple[list[Image.Image], list[list[dict]]]:
    """Random images, each with its questions (different lengths) in a row; one PIL object per question, as an
    evaluation loop that opens every question's image file makes them."""
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(num_images)]
    counts = QUESTION_SETS[name]
    images, conversations = [], []
    for i, picture in enumerate(pictures):
        for j in range(counts[i % len(counts)]):
            images.append(picture.copy())
            conversations.append(image_prompt_messages(f"{QUESTIONS[(i + j) % len(QUESTIONS)]}\n{INSTRUCTION}"))
    return images, conversations


def run_mode(model, processor, mode: str, args: argparse.Namespace) -> dict:
    """Best-of-``--repeats`` wall time of one mode on each question set (the CPU may be shared: the minimum is
    the least disturbed run) and its answers; the process's peak memory over all sets (CUDA allocations on a GPU,
    else the peak resident set, model and interpreter included; every mode runs in a fresh process, so the peaks
    compare)."""
    options = {"batch_size": args.batch_size, **MODES[mode]}
    out = {}
    for set_name in args.sets:
        images, conversations = question_set(set_name, args.images)
        generate_greedy(model, processor, images[:1], conversations[:1], max_new_tokens=1, **options)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            generated = generate_greedy(model, processor, images, conversations, max_new_tokens=args.max_new_tokens,
                                        **options)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
            times.append(time.perf_counter() - start)
        out[set_name] = {"seconds": min(times), "questions": len(conversations),
                         "questions_per_s": len(conversations) / min(times),
                         "answers": [t.tolist() for t in generated.tokens]}
    return {"sets": out, "peak_mib": peak_mib(model.device)}


def chat_ttft(chat_model: ChatModel, image_path: Path, turns: int, reuse: bool) -> dict:
    """Time to first token per turn (to the end of the turn's prefill, whose logits give the first token)."""
    session = ChatSession(chat_model, reuse_cache=reuse)
    session.set_image(image_path)
    first_forward_end: list[float] = []
    hook = chat_model.model.language_model.register_forward_hook(lambda *_: first_forward_end.append(time.perf_counter()))
    times = []
    try:
        for turn in range(turns):
            first_forward_end.clear()
            start = time.perf_counter()
            for _ in session.ask(QUESTIONS[turn % len(QUESTIONS)] + "?"):
                pass
            times.append(first_forward_end[0] - start)
    finally:
        hook.remove()
    return {"ttft_s": times, "last_vs_first": times[-1] / times[0]}


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process."""
    settings = GenerationSettings(args.max_new_tokens, temperature=0)
    chat_model = ChatModel.load(args.checkpoint, device=args.device, dtype=args.dtype, settings=settings)
    if args.worker in MODES:
        return run_mode(chat_model.model, chat_model.processor, args.worker, args)
    return {name: chat_ttft(chat_model, args.chat_image, args.chat_turns, reuse=name == "cached")
            for name in ("cached", "re-prefill")}


def spawn(args: argparse.Namespace, **extra) -> dict:
    """`worker` in a fresh process (its peak memory is its own); in this one with --smoke (checks, not figures)."""
    if args.smoke:
        return worker(argparse.Namespace(**{**vars(args), **extra}))
    argv = [sys.executable, __file__, "--device", args.device, "--dtype", args.dtype, "--batch-size",
            str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--images", str(args.images),
            "--repeats", str(args.repeats), "--chat-turns", str(args.chat_turns), "--sets", *args.sets]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_modes(args: argparse.Namespace, checkpoint: Path) -> dict:
    """(a), (b), (c) on every question set, each mode in its own process."""
    return summarize({mode: spawn(args, worker=mode, checkpoint=checkpoint) for mode in MODES}, args.images)


def summarize(runs: dict[str, dict], num_images: int) -> dict:
    """Ratios per question set from each mode's `run_mode` result; raises if the modes' answers differ."""
    table = {}
    for set_name in runs["batched"]["sets"]:
        results = {mode: dict(runs[mode]["sets"][set_name]) for mode in MODES}
        answers = [r.pop("answers") for r in results.values()]
        for mode, other in zip(list(MODES)[1:], answers[1:]):
            if other != answers[0]:
                differ = sum(a != b for a, b in zip(other, answers[0]))
                raise SystemExit(f"{set_name}: {mode} answers differ from one-at-a-time on {differ} questions")
        one, batched, shared = (results[m]["seconds"] for m in MODES)
        table[set_name] = {"questions_per_image": results["batched"]["questions"] / num_images, "modes": results,
                           "shared_vs_one": one / shared, "shared_vs_batched": batched / shared,
                           "batched_vs_one": one / batched, "answers_identical": True}
    return {"sets": table, "peak_mib": {mode: runs[mode]["peak_mib"] for mode in MODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", nargs="+", choices=list(LMS), default=list(LMS))
    parser.add_argument("--sets", nargs="+", choices=list(QUESTION_SETS), default=list(QUESTION_SETS))
    parser.add_argument("--images", type=int, default=3, help="images per question set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode; the fastest counts")
    parser.add_argument("--image-size", type=int, default=336, help="336: LLaVA-1.5's 576 image tokens")
    parser.add_argument("--chat-turns", type=int, default=10, help="0: skip the chat measurement")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny LM at 28 px, one image, pope, 2 tokens, 2 chat turns, in one process: checks, not figures")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", choices=[*MODES, "chat"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chat-image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.images, args.batch_size, args.max_new_tokens, args.repeats) < 1:
        parser.error("--images, --batch-size, --max-new-tokens and --repeats must be >= 1")
    if args.smoke:
        args.lm, args.sets, args.images, args.batch_size, args.max_new_tokens = ["tiny"], ["pope"], 1, 4, 2
        args.repeats, args.image_size, args.chat_turns = 1, 28, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results: dict = {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
                     "max_new_tokens": args.max_new_tokens, "threads": args.threads or torch.get_num_threads(),
                     "lms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        chat_image = Path(tmp) / "chat.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(chat_image)
        for lm in args.lm:
            checkpoint = build_checkpoint(Path(tmp) / lm, lm, args.image_size)
            entry = results["lms"][lm] = compare_modes(args, checkpoint)
            for set_name, row in entry["sets"].items():
                print(f"{lm:>5} {set_name:<9} {row['questions_per_image']:.2f} q/img  "
                      + "  ".join(f"{m} {v['questions_per_s']:.2f} q/s" for m, v in row["modes"].items())
                      + f"  | shared/one {row['shared_vs_one']:.2f}x  shared/batched {row['shared_vs_batched']:.2f}x"
                      "  answers identical", flush=True)
            print(f"{lm:>5} peak memory " + "  ".join(f"{m} {v:.0f} MiB" for m, v in entry["peak_mib"].items()),
                  flush=True)
            if args.chat_turns:
                entry["chat"] = chat = spawn(args, worker="chat", checkpoint=checkpoint, chat_image=chat_image)
                for name, c in chat.items():
                    print(f"{lm:>5} chat {name:<10} TTFT turn 1 {c['ttft_s'][0] * 1e3:.0f} ms, turn {args.chat_turns} "
                          f"{c['ttft_s'][-1] * 1e3:.0f} ms ({c['last_vs_first']:.2f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
