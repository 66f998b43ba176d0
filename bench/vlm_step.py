"""VLM train step: ViT-Split (`clip-l-vlm`) against the LLaVA-1.5 baseline (`llava-baseline`) at the same LM.

Both are `VitSplitLlavaForConditionalGeneration`, built with random weights from config-only directories of the
real shapes (`vitsplit_vlm.shapes`: CLIP ViT-L/14-336, 576 image tokens + CLS; a Vicuna-7B-shaped LM, 4096 wide,
32 heads, 11008 MLP, vocab 32000), cut in depth by `--layers` / `--tower-layers`. What trains per stage is the
shipped configs' `train_parts` (`stage1_align`, `stage2_instruct`: ViT-Split with the identity projector and a
fusion as wide as the LM); the baseline has LLaVA-1.5's `mlp2x_gelu` projector and trains the parts of those that
exist without the split (stage 1: projector; stage 2: projector + LM). A step is forward (a batch of
`--seq-len`-token rows holding the image tokens) + loss + backward + AdamW on the trainable parameters.

Each (stage, variant) is built once in its own long-lived process, so its peak memory is its own (CPU: the
process's peak RSS; GPU: `torch.cuda.max_memory_allocated`), and the parent steps the two variants of a stage in
turn, round after round (bench/interleaved.py: `--warmup` untimed rounds, then `--rounds` timed ones), so a change
in machine load hits both. On a CPU a step's time is the process's CPU time, which other jobs sharing the cores
barely change. Printed: the ViT-Split / baseline ratios of step time (median of the per-round ratios), of peak
memory and of FLOPs (counted on the meta device); absolute times, samples/s and tokens/s only on a GPU.

    python bench/vlm_step.py --layers 1 --tower-layers 4 --seq-len 1024 --threads 1      # CPU: ratios only
    python bench/vlm_step.py --layers 32 --tower-layers 24 --flops-only                   # FLOPs at the real depth
    python bench/vlm_step.py --device cuda --layers 32 --batch-size 4 --gradient-checkpointing --json vlm_step.json
    python bench/vlm_step.py --smoke                                          # tiny shapes: checks, not figures
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from transformers import CLIPVisionConfig, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402  (the benches' shared FLOP count)
from interleaved import Worker, interleaved_rounds, serve  # noqa: E402  (one live process per variant, in rounds)

from vitsplit_vlm.config import load_config  # noqa: E402
from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration  # noqa: E402
from vitsplit_vlm.peak_memory import peak_mib  # noqa: E402
from vitsplit_vlm.plan import vlm_config  # noqa: E402
from vitsplit_vlm.shapes import write_config_dir  # noqa: E402
from vitsplit_vlm.train.config import RunConfig  # noqa: E402

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


def counted(variant: str, stage: str, args: argparse.Namespace, tower: Path, lm: Path) -> tuple[int, int]:
    """FLOPs of one forward + backward at the run's shape, counted on the meta device (bench/flops.py): any depth
    (the full 32 layers on a laptop) in seconds. The images are spliced in as the model's forward does, without its
    count of image tokens, which reads a value the meta device does not hold. Returns (FLOPs, image tokens)."""
    meta = torch.device("meta")
    model, _ = build(variant, stage, tower, lm, meta, DTYPES[args.dtype], "sdpa", checkpointing=False)
    batch = make_batch(model, args.batch_size, args.seq_len, meta)

    def forward_backward() -> None:
        ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        features = model.get_image_features(batch["pixel_values"]).to(embeds.dtype)
        embeds = embeds.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), features)
        model.language_model(inputs_embeds=embeds, labels=batch["labels"]).loss.backward()

    return count_flops(forward_backward), model.num_image_tokens


def build_worker(variant: str, stage: str, args: argparse.Namespace, tower: Path,
                 lm: Path) -> tuple[Callable[[], dict], dict]:
    """In the worker's own process: the step closure (forward + loss + backward + AdamW; it returns the loss) and
    what the parent reports of the variant, with the memory before it was built."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    base = peak_mib(device)
    torch.manual_seed(0)
    model, parts = build(variant, stage, tower, lm, device, dtype, args.attn, args.gradient_checkpointing)
    batch = make_batch(model, args.batch_size, args.seq_len, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def step() -> dict:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    info = {"variant": variant, "stage": stage, "train_parts": parts, "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in model.parameters()), "image_tokens": model.num_image_tokens,
            "base_mib": base}
    return step, info


def measure_stage(stage: str, args: argparse.Namespace, argv: list[str], tower: Path, lm: Path) -> list[dict]:
    """Both variants of the stage, each in its own live process (same options), stepped in interleaved rounds; then
    their peak memory. Wall and process CPU time of every timed step, and the median of each."""
    workers = {}
    for variant in VARIANTS:
        print(f"  building {stage} {variant}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, *argv, "--worker", f"{stage}:{variant}", "--tower", str(tower), "--lm", str(lm)]
        workers[variant] = Worker(f"{stage} {variant}", command)
    timed = interleaved_rounds(workers, args.warmup, args.rounds)
    results = []
    for variant, worker in workers.items():
        times, cpu_times = [r["step_s"] for r in timed[variant]], [r["cpu_s"] for r in timed[variant]]
        results.append({**worker.info, **worker.finish(), "step_s": statistics.median(times), "times_s": times,
                        "cpu_step_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
                        "losses": [r["loss"] for r in timed[variant]]})
    return results


def summarize(results: list[dict], flops: dict[str, dict[str, int]], args: argparse.Namespace) -> dict:
    """Per stage: each variant's median step and peak, the median of the per-round time ratios, the memory and FLOP
    ratios."""
    tokens = args.batch_size * args.seq_len
    stages = {}
    for stage in args.stages:
        flop_ratio = flops[stage]["vit-split"] / flops[stage]["baseline"]
        if args.flops_only:
            stages[stage] = {"flops": flops[stage], "flop_ratio": flop_ratio}
            continue
        rows = {r["variant"]: r for r in results if r["stage"] == stage}
        key = "times_s" if args.device.startswith("cuda") else "cpu_times_s"  # CPU: process time, which sharing the
        ratios = [s / b for s, b in zip(rows["vit-split"][key], rows["baseline"][key])]  # cores barely moves
        variants = {}
        for v in VARIANTS:
            step = rows[v]["step_s"]
            variants[v] = {
                "train_parts": rows[v]["train_parts"], "trainable_params": rows[v]["trainable_params"],
                "total_params": rows[v]["total_params"], "step_s": step, "peak_mib": rows[v]["peak_mib"],
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
          f"{'on' if args.gradient_checkpointing else 'off'}, {args.warmup} warm-up + {args.rounds} timed round(s)")
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds; a round steps both variants of a stage once, in turn (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round: checks, not figures")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count each step's FLOPs, on the meta device (seconds, at any depth); no timing")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "stage:variant", serves steps on stdin
    parser.add_argument("--tower", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device; use --device cpu.")
    if min(args.layers, args.tower_layers, args.batch_size, args.rounds) < 1 or args.warmup < 0:
        parser.error("--layers, --tower-layers, --batch-size and --rounds must be >= 1, --warmup >= 0.")
    if args.tower_layers < 2:
        parser.error("--tower-layers must be >= 2: the features are the penultimate block's.")
    if args.smoke:
        args.seq_len, args.rounds, args.warmup = 32, 1, 0
    args.shape = ("smoke: tiny CLIP (56 px, 16 image tokens) + tiny Llama" if args.smoke else
                  f"CLIP-L/14-336 cut to {args.tower_layers} blocks + Vicuna-7B-shaped LM cut to {args.layers} layers")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        stage, variant = args.worker.split(":")
        serve(*build_worker(variant, stage, args, args.tower, args.lm), torch.device(args.device))
        return 0
    def report(results: list[dict]) -> None:
        if args.json:
            options = {k: v for k, v in vars(args).items() if k not in ("json", "worker", "tower", "lm")}
            args.json.write_text(json.dumps({"options": options, "flops": flops, "results": results}, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        tower, lm = write_components(Path(tmp), args.layers, args.tower_layers, args.smoke)
        counts = {stage: {v: counted(v, stage, args, tower, lm) for v in VARIANTS} for stage in args.stages}
        flops = {stage: {v: n for v, (n, _) in row.items()} for stage, row in counts.items()}
        args.image_tokens = counts[args.stages[0]]["baseline"][1]
        results = []
        for i, stage in enumerate([] if args.flops_only else args.stages, 1):
            print(f"[{i}/{len(args.stages)}] {stage}: {', '.join(VARIANTS)}", file=sys.stderr, flush=True)
            results += measure_stage(stage, args, argv, tower, lm)
            report(results)  # after every stage: a long run keeps what it measured if it is stopped
    stages = summarize(results, flops, args)
    print_summary(stages, args)
    if args.json:
        report(results)
        data = json.loads(args.json.read_text())
        args.json.write_text(json.dumps({**data, "stages": stages}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
