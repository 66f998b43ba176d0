"""VLM train step: ViT-Split (`clip-l-vlm`) against the LLaVA-1.5 baseline (`llava-baseline`) at the same LM.

Both are `VitSplitLlavaForConditionalGeneration`, built with random weights from config-only directories of the
real shapes (`vitsplit_vlm.shapes`: CLIP ViT-L/14-336, 576 image tokens + CLS; a Vicuna-7B-shaped LM, 4096 wide,
32 heads, 11008 MLP, vocab 32000), cut in depth by `--layers` / `--tower-layers`. What trains per stage is the
shipped configs' `train_parts` (`stage1_align`, `stage2_instruct`: ViT-Split with the identity projector and a
fusion as wide as the LM); the baseline has LLaVA-1.5's `mlp2x_gelu` projector and trains the parts of those that
exist without the split (stage 1: projector; stage 2: projector + LM). A step is forward (a batch of
`--seq-len`-token rows holding the image tokens) + loss + backward + AdamW on the trainable parameters.

Each (stage, variant) runs in its own process, so its peak memory is its own (CPU: the process's peak RSS; GPU:
`torch.cuda.max_memory_allocated`), and the rounds alternate the order of the variants (interleaved repeats, so a
change in machine load hits both). On a CPU a step's time is the process's CPU time, which other jobs sharing the
cores barely change. Printed: the ViT-Split / baseline ratios of step time (median of the per-round ratios), of
peak memory and of FLOPs (counted on the meta device); absolute times, samples/s and tokens/s only on a GPU.

    python bench/vlm_step.py --layers 1 --tower-layers 4 --seq-len 1024 --threads 1      # CPU: ratios only
    python bench/vlm_step.py --layers 32 --tower-layers 24 --flops-only                   # FLOPs at the real depth
    python bench/vlm_step.py --device cuda --layers 32 --batch-size 4 --gradient-checkpointing --json vlm_step.json
    python bench/vlm_step.py --smoke                                          # tiny shapes, one process: checks
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, LlamaConfig

from vitsplit_vlm.config import load_config
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.plan import vlm_config
from vitsplit_vlm.shapes import write_config_dir
from vitsplit_vlm.train.config import RunConfig

STAGES = {"stage1": "stage1_align", "stage2": "stage2_instruct"}  # stage -> the shipped config that sets its parts
VARIANTS = ("baseline", "vit-split")
TOWER, LM = "clip-vit-large-patch14-336", "vicuna-7b-v1.5"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GOAL = 1.05  # ViT-Split's stage-2 step at most this many times the baseline's, at the 7B width


def write_components(out: Path, layers: int, tower_layers: int, smoke: bool) -> tuple[Path, Path]:
    """Config-only directories of the tower and the LM: the real shapes cut in depth, or tiny ones for --smoke."""
    if smoke:
        tower, lm = out / "tower", out / "lm"
        CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         image_size=56, patch_size=14).save_pretrained(tower)
        LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                    num_hidden_layers=2, tie_word_embeddings=False).save_pretrained(lm)
        return tower, lm
    return write_config_dir(TOWER, out / TOWER, tower_layers), write_config_dir(LM, out / LM, layers)


def run_config(variant: str, stage: str, tower: Path, lm: Path) -> RunConfig:
    """The shipped config of the stage with these components; the baseline as LLaVA-1.5 (split off, MLP projector)."""
    width = LlamaConfig.from_pretrained(lm).hidden_size
    overrides = [f"model.vision_tower={tower}", f"model.language_model={lm}"]
    if variant == "baseline":
        overrides += ["model.split=llava-baseline", "model.split_options={}", "model.projector_type=mlp2x_gelu"]
    else:
        overrides.append(f"model.split_options.fusion_dim={width}")  # identity projector: fusion as wide as the LM
    return load_config(RunConfig, STAGES[stage], overrides)


def build(variant: str, stage: str, tower: Path, lm: Path, device: torch.device, dtype: torch.dtype, attn: str,
          checkpointing: bool) -> tuple[VitSplitLlavaForConditionalGeneration, list[str]]:
    """The model (random weights, built on the device in `dtype`) with the stage's parts trainable."""
    config = run_config(variant, stage, tower, lm)
    model_cfg = vlm_config(config, str(tower), str(lm))
    with torch.device(device):
        model = VitSplitLlavaForConditionalGeneration._from_config(model_cfg, dtype=dtype, attn_implementation=attn)
    modules = model.part_modules()
    parts = [p for p in getattr(config, stage).train_parts if modules[p]]  # the baseline has no task / prior head
    model.set_trainable(parts)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train(), parts


def make_batch(model, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows of `seq_len` tokens: BOS, the image tokens, random text; the loss on the text (as LLaVA's answers)."""
    image_tokens = model.num_image_tokens
    text = seq_len - 1 - image_tokens
    if text < 1:
        raise SystemExit(f"--seq-len {seq_len} cannot hold the {image_tokens} image tokens plus BOS and text; raise it.")
    generator = torch.Generator().manual_seed(0)
    vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id
    words = torch.randint(3, min(vocab, image_id) - 1, (batch_size, text), generator=generator)
    ids = torch.cat([torch.ones(batch_size, 1, dtype=torch.long), torch.full((batch_size, image_tokens), image_id), words], 1)
    labels = ids.clone()
    labels[:, : 1 + image_tokens] = -100
    size = model.vision.parts.image_size
    pixels = torch.randn(batch_size, 3, size, size, generator=generator)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "pixel_values": pixels.to(device)}


def count_flops(variant: str, stage: str, args: argparse.Namespace, tower: Path, lm: Path) -> tuple[int, int]:
    """FLOPs of one forward + backward (matmuls, convolutions, attention) at the run's shape, counted on the meta
    device: no weights, no time, so any depth (the full 32 layers on a laptop) and no CPU contention. The math
    attention backend is counted as its matmuls. The images are spliced in as the model's forward does, without
    its count of image tokens, which reads a value the meta device does not hold. Returns (FLOPs, image tokens)."""
    meta = torch.device("meta")
    model, _ = build(variant, stage, tower, lm, meta, DTYPES[args.dtype], "sdpa", checkpointing=False)
    batch = make_batch(model, args.batch_size, args.seq_len, meta)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        features = model.get_image_features(batch["pixel_values"]).to(embeds.dtype)
        embeds = embeds.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), features)
        model.language_model(inputs_embeds=embeds, labels=batch["labels"]).loss.backward()
    return counter.get_total_flops(), model.num_image_tokens


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, stage: str, args: argparse.Namespace, tower: Path, lm: Path) -> dict:
    """Build, warm up, then time `args.steps` steps (device-synchronised); meant to run alone in its process."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    base = peak_mib(device)
    torch.manual_seed(0)
    model, parts = build(variant, stage, tower, lm, device, dtype, args.attn, args.gradient_checkpointing)
    batch = make_batch(model, args.batch_size, args.seq_len, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu_times, losses = [], [], []
    for i in range(args.warmup + args.steps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
        print(f"    {stage} {variant}: {'warm-up' if i < args.warmup else 'timed'} step {i + 1}/"
              f"{args.warmup + args.steps} {elapsed:.2f}s loss {losses[-1]:.3f} peak {peak_mib(device):.0f} MiB",
              file=sys.stderr, flush=True)
    return {
        "variant": variant, "stage": stage, "train_parts": parts,
        "trainable_params": sum(p.numel() for p in trainable), "total_params": sum(p.numel() for p in model.parameters()),
        "image_tokens": model.num_image_tokens, "step_s": statistics.median(times), "times_s": times,
        "cpu_step_s": statistics.median(cpu_times), "cpu_times_s": cpu_times, "losses": losses,
        "peak_mib": peak_mib(device), "base_mib": base,
    }


def spawn(variant: str, stage: str, tower: Path, lm: Path) -> dict:
    """`measure` in a fresh process (same options), so its peak memory is its own."""
    argv = [a for a in sys.argv[1:]]
    cmd = [sys.executable, __file__, *argv, "--worker", f"{stage}:{variant}", "--tower", str(tower), "--lm", str(lm)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{stage} {variant} failed in its process (exit {done.returncode}); its error is printed above.")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_rounds(args: argparse.Namespace, tower: Path, lm: Path, in_process: bool, report) -> list[dict]:
    """Every (stage, variant) once per round; odd rounds run the variants in reverse order. `report(results)` after
    each, so a long run keeps what it measured."""
    results = []
    for r in range(args.rounds):
        for stage in args.stages:
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                print(f"[round {r + 1}/{args.rounds}] {stage} {variant}", file=sys.stderr, flush=True)
                result = measure(variant, stage, args, tower, lm) if in_process else spawn(variant, stage, tower, lm)
                results.append({**result, "round": r})
                report(results)
    return results


def summarize(results: list[dict], flops: dict[str, dict[str, int]], args: argparse.Namespace) -> dict:
    """Per stage: each variant's median step and max peak, the median of the per-round time ratios, the memory and
    FLOP ratios."""
    tokens = args.batch_size * args.seq_len
    stages = {}
    for stage in args.stages:
        flop_ratio = flops[stage]["vit-split"] / flops[stage]["baseline"]
        if args.flops_only:
            stages[stage] = {"flops": flops[stage], "flop_ratio": flop_ratio}
            continue
        rows = {v: [r for r in results if r["stage"] == stage and r["variant"] == v] for v in VARIANTS}
        key = "step_s" if args.device.startswith("cuda") else "cpu_step_s"  # CPU: process time, which sharing the
        by_round = {v: {r["round"]: r[key] for r in rows[v]} for v in VARIANTS}  # cores with other jobs barely moves
        ratios = [by_round["vit-split"][k] / by_round["baseline"][k] for k in sorted(by_round["baseline"])]
        variants = {}
        for v in VARIANTS:
            step = statistics.median(r["step_s"] for r in rows[v])
            variants[v] = {
                "train_parts": rows[v][0]["train_parts"], "trainable_params": rows[v][0]["trainable_params"],
                "total_params": rows[v][0]["total_params"], "step_s": step, "peak_mib": max(r["peak_mib"] for r in rows[v]),
                "samples_per_s": args.batch_size / step, "tokens_per_s": tokens / step,
            }
        stages[stage] = {
            "variants": variants, "flops": flops[stage], "flop_ratio": flop_ratio, "time_ratios": ratios,
            "time_ratio": statistics.median(ratios),
            "memory_ratio": variants["vit-split"]["peak_mib"] / variants["baseline"]["peak_mib"],
        }
    return stages


def print_summary(stages: dict, args: argparse.Namespace) -> None:
    gpu = args.device.startswith("cuda")
    print(f"\n{args.shape}: batch {args.batch_size} x {args.seq_len} tokens ({args.image_tokens} image tokens), "
          f"{args.device}, {args.dtype}, attention {args.attn}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, {args.rounds} round(s) x {args.steps} timed step(s)")
    if args.flops_only:
        for stage, row in stages.items():
            f = row["flops"]
            print(f"{stage}: forward + backward TFLOP: baseline {f['baseline'] / 1e12:.2f}, ViT-Split "
                  f"{f['vit-split'] / 1e12:.2f}, ViT-Split / baseline {row['flop_ratio']:.3f}x")
        return
    if not gpu:
        print(f"CPU ({torch.get_num_threads()} threads): absolute times are NOT meaningful, only the ratios; a step's "
              "time is its process CPU time (time.process_time), which other jobs on the cores barely change.")
    memory = "peak CUDA allocated" if gpu else "peak RSS of the process"
    head = f"{'stage':<8}{'variant':<11}{'trains':<44}{'trainable M':>12}{'total M':>10}{'TFLOP':>8}{'peak MiB':>10}"
    print(head + (f"{'step s':>9}{'samples/s':>11}{'tokens/s':>10}" if gpu else "") + f"   memory = {memory}")
    for stage, row in stages.items():
        for variant, v in row["variants"].items():
            line = (f"{stage:<8}{variant:<11}{', '.join(v['train_parts']):<44}{v['trainable_params'] / 1e6:>12.1f}"
                    f"{v['total_params'] / 1e6:>10.1f}{row['flops'][variant] / 1e12:>8.2f}{v['peak_mib']:>10.0f}")
            if gpu:
                line += f"{v['step_s']:>9.3f}{v['samples_per_s']:>11.2f}{v['tokens_per_s']:>10.0f}"
            print(line)
        spread = ", ".join(f"{x:.3f}" for x in row["time_ratios"])
        print(f"{stage}: ViT-Split / baseline step time {row['time_ratio']:.3f}x (per round: {spread}), "
              f"peak memory {row['memory_ratio']:.3f}x, FLOPs {row['flop_ratio']:.3f}x")
    if "stage2" in stages:
        ratio = stages["stage2"]["time_ratio"]
        print(f"goal: ViT-Split's stage-2 step <= {GOAL}x the baseline's at the 7B width: {ratio:.3f}x here "
              f"({'met' if ratio <= GOAL else 'NOT met'} at this shape)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16",
                        help="the weights' dtype; AdamW keeps its states in it too (default: %(default)s)")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation (default: %(default)s)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as the shipped configs (off by default)")
    parser.add_argument("--layers", type=int, default=2, help="LM layers of the 32 of Vicuna-7B (default: %(default)s)")
    parser.add_argument("--tower-layers", type=int, default=24,
                        help="CLIP-L blocks of its 24; the features are the penultimate one's (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row, 576 of them the image's (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every (stage, variant) (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process; their median counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round, in one process: checks, not figures")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count each step's FLOPs, on the meta device (seconds, at any depth); no timing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "stage:variant", JSON to stdout
    parser.add_argument("--tower", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device; use --device cpu.")
    if min(args.layers, args.tower_layers, args.batch_size, args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--layers, --tower-layers, --batch-size, --rounds and --steps must be >= 1, --warmup >= 0.")
    if args.tower_layers < 2:
        parser.error("--tower-layers must be >= 2: the features are the penultimate block's.")
    if args.smoke:
        args.seq_len, args.rounds, args.warmup, args.steps = 32, 1, 0, 1
    args.shape = ("smoke: tiny CLIP (56 px, 16 image tokens) + tiny Llama" if args.smoke else
                  f"CLIP-L/14-336 cut to {args.tower_layers} blocks + Vicuna-7B-shaped LM cut to {args.layers} layers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        stage, variant = args.worker.split(":")
        print(json.dumps(measure(variant, stage, args, args.tower, args.lm)))
        return 0
    def report(results: list[dict]) -> None:
        if args.json:
            options = {k: v for k, v in vars(args).items() if k not in ("json", "worker", "tower", "lm")}
            args.json.write_text(json.dumps({"options": options, "flops": flops, "results": results}, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        tower, lm = write_components(Path(tmp), args.layers, args.tower_layers, args.smoke)
        counted = {stage: {v: count_flops(v, stage, args, tower, lm) for v in VARIANTS} for stage in args.stages}
        flops = {stage: {v: n for v, (n, _) in row.items()} for stage, row in counted.items()}
        args.image_tokens = counted[args.stages[0]]["baseline"][1]
        results = [] if args.flops_only else run_rounds(args, tower, lm, args.smoke, report)
    stages = summarize(results, flops, args)
    print_summary(stages, args)
    if args.json:
        report(results)
        data = json.loads(args.json.read_text())
        args.json.write_text(json.dumps({**data, "stages": stages}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
