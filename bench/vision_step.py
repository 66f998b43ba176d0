"""Train-step cost of ViT-Split against full fine-tuning, a ViT-Adapter-like baseline and LoRA, on a ViT-B/14 DINOv2.

Every variant gets the same input and the same dense objective (a 1x1 conv classifier on the patch grid,
cross-entropy against random labels) and does forward + loss + backward + AdamW on its trainable parameters; the
frozen tower's no-grad forward is the floor. Each variant runs in its own subprocess so its peak memory is its own.

    python bench/vision_step.py                                  # CPU: only the ratios mean anything
    python bench/vision_step.py --device cuda --dtype bf16 --batch-size 32 --json vision_step.json
    python bench/vision_step.py --smoke                          # tiny tower, one process: checks, not figures
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Dinov2Config, Dinov2Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402  (the benches' shared FLOP count)

from vitsplit_vlm.peak_memory import peak_mib  # noqa: E402
from vitsplit_vlm.vision import ViTSplit, ViTSplitConfig, resolve_split  # noqa: E402
from vitsplit_vlm.vision.towers import run_block, tower_parts  # noqa: E402

VARIANTS = ("frozen", "vit-split", "lora", "full", "full+adapter")
DESCRIPTIONS = {
    "frozen": "frozen tower forward, no grad (floor)",
    "vit-split": "ViT-Split, preset dinov2-b (plain 3x3 convs)",
    "lora": "peft LoRA r=16 on q/k/v/o + MLP, every block",
    "full": "full fine-tune",
    "full+adapter": "full fine-tune + ViT-Adapter-like branch",
}


@dataclass
class BenchConfig:
    """The tower shape (ViT-B/14 by default), the input and the objective."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    patch_size: int = 14
    image_size: int = 224
    batch_size: int = 4
    num_classes: int = 150
    lora_rank: int = 16
    adapter_heads: int = 6
    # Plain 3x3 convs, as the figures in bench/README.md were measured; bench/dense_step.py times the deformable ones.
    split: ViTSplitConfig = field(default_factory=lambda: resolve_split("dinov2-b", {"deformable": False}))


def smoke_config() -> BenchConfig:
    """A tiny tower (4 blocks, 32 wide, 28 px) for --smoke: every variant builds and steps, in seconds."""
    return BenchConfig(hidden_size=32, num_layers=4, num_heads=2, image_size=28, batch_size=2, lora_rank=4,
                       adapter_heads=2, split=ViTSplitConfig(task_layers=1, prior_layers=[1, 3]))


def build_tower(cfg: BenchConfig) -> Dinov2Model:
    """Random weights: the step cost does not depend on the values, and no hub is needed."""
    return Dinov2Model(
        Dinov2Config(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=4 * cfg.hidden_size,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
        )
    )


def _patch_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B x N x C patch tokens (prefix already dropped) -> B x C x h x w."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *grid)


class TowerFeatures(nn.Module):
    """The tower's own normed output on the patch grid (full fine-tune, LoRA and the frozen floor)."""

    def __init__(self, tower: nn.Module, patch_size: int):
        super().__init__()
        self.tower, self.patch_size = tower, patch_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return _patch_map(self.tower(pixel_values=pixels).last_hidden_state[:, 1:], grid)


class SplitFeatures(nn.Module):
    """ViT-Split's fused map (frozen tower + task head + prior head + fusion)."""

    def __init__(self, split: ViTSplit):
        super().__init__()
        self.split = split

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.split(pixels).feature_map


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SpatialPrior(nn.Module):
    """ViT-Adapter's spatial prior module: a ResNet-like conv stem, levels at strides 4/8/16/32, each projected to D."""

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        stem = [*_conv_bn_relu(3, width, 2), *_conv_bn_relu(width, width), *_conv_bn_relu(width, width)]
        widths = [width, 2 * width, 4 * width, 4 * width]
        self.levels = nn.ModuleList(
            [nn.Sequential(*stem, nn.MaxPool2d(3, 2, 1))]
            + [nn.Sequential(*_conv_bn_relu(widths[i], widths[i + 1], 2)) for i in range(3)]
        )
        self.proj = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in widths)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], pixels
        for level, proj in zip(self.levels, self.proj):
            x = level(x)
            maps.append(proj(x))
        return maps


class Interaction(nn.Module):
    """One injector (ViT tokens attend to the conv features) and one extractor (conv features attend back)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.inject_norm_q, self.inject_norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.inject = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gamma = nn.Parameter(torch.zeros(dim))  # ViT-Adapter's zero-initialised injector gate
        self.extract_norm_q, self.extract_norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.extract = nn.MultiheadAttention(dim, heads, batch_first=True)
        # ViT-Adapter's ConvFFN (ratio 0.25) without its depth-wise conv.
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 4), nn.GELU(), nn.Linear(dim // 4, dim))

    def inject_into(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        kv = self.inject_norm_kv(c)
        return x + self.gamma * self.inject(self.inject_norm_q(x), kv, kv, need_weights=False)[0]

    def extract_from(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kv = self.extract_norm_kv(x)
        c = c + self.extract(self.extract_norm_q(c), kv, kv, need_weights=False)[0]
        return c + self.ffn(c)


class AdapterFeatures(nn.Module):
    """A ViT-Adapter-like baseline: the tower (trainable) plus a conv spatial prior and 4 injector/extractor pairs.

    This approximates ViT-Adapter's cost with standard multi-head cross-attention where the original uses
    multi-scale deformable attention: the same interaction pattern (inject before each quarter of the blocks,
    extract after it, over the flattened 1/8, 1/16, 1/32 conv features), but dense instead of sparse sampling.
    The output is the ViT map plus all four adapter levels resized to the patch grid, so every part gets gradients.
    """

    def __init__(self, tower: Dinov2Model, heads: int, num_interactions: int = 4):
        super().__init__()
        self.tower = tower
        self.parts = tower_parts(tower)
        depth, dim = len(self.parts.blocks), self.parts.hidden_size
        if depth < num_interactions:
            raise ValueError(f"The adapter baseline needs at least {num_interactions} blocks; the tower has {depth}.")
        self.inject_at = {i * depth // num_interactions: i for i in range(num_interactions)}
        self.extract_at = {(i + 1) * depth // num_interactions - 1: i for i in range(num_interactions)}
        self.spatial_prior = SpatialPrior(dim)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.interactions = nn.ModuleList(Interaction(dim, heads) for _ in range(num_interactions))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.parts.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        c1, *multi = self.spatial_prior(pixels)
        shapes = [m.shape[-2:] for m in multi]
        c = torch.cat([m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate(multi)], dim=1)
        x = self.parts.embed(pixels)
        for index, block in enumerate(self.parts.blocks):
            if index in self.inject_at:
                x = self.interactions[self.inject_at[index]].inject_into(x, c)
            x = run_block(block, x)
            if index in self.extract_at:
                c = self.interactions[self.extract_at[index]].extract_from(c, x)
        out = _patch_map(self.parts.feature_norm(x)[:, self.parts.num_prefix_tokens :], grid)
        levels = [c1] + [_patch_map(t, s) for t, s in zip(c.split([h * w for h, w in shapes], dim=1), shapes)]
        for level in levels:
            out = out + F.interpolate(level, size=grid, mode="bilinear", align_corners=False)
        return out


class DenseModel(nn.Module):
    """A variant's feature map -> the shared 1x1 conv classifier: the same objective for every variant."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))


def build_variant(name: str, cfg: BenchConfig) -> nn.Module:
    """The frozen floor is the bare tower features; every other variant is a DenseModel with its trainable set."""
    tower = build_tower(cfg)
    if name == "frozen":
        return TowerFeatures(tower, cfg.patch_size).requires_grad_(False).eval()
    if name == "full":
        backbone: nn.Module = TowerFeatures(tower, cfg.patch_size)
    elif name == "full+adapter":
        backbone = AdapterFeatures(tower, cfg.adapter_heads)
    elif name == "lora":
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_rank,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
        )
        backbone = TowerFeatures(get_peft_model(tower, lora), cfg.patch_size)  # peft freezes the base
    elif name == "vit-split":
        backbone = SplitFeatures(ViTSplit(tower, cfg.split))
    else:
        raise ValueError(f"Unknown variant '{name}'. Known: {', '.join(VARIANTS)}.")
    return DenseModel(backbone, cfg.hidden_size, cfg.num_classes).train()


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_step(
    name: str, model: nn.Module, cfg: BenchConfig, device: torch.device, bf16: bool = False
) -> Callable[[], None]:
    """One closure per variant: forward + cross-entropy + backward + AdamW, or the no-grad forward for the floor."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator).to(device)
    grid = cfg.image_size // cfg.patch_size
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size, grid, grid), generator=generator).to(device)

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    if name == "frozen":

        def forward_only() -> None:
            with torch.no_grad(), autocast():
                model(pixels)

        return forward_only

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        with autocast():
            logits = model(pixels)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def time_steps(name: str, step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed step after `warmup` untimed ones (device-synchronised), with progress on stderr."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        kind = "warm-up" if i < warmup else "timed"
        print(f"    {name}: {kind} step {i + 1}/{warmup + steps} {elapsed:.3f}s", file=sys.stderr, flush=True)
    return times


def measure(name: str, cfg: BenchConfig, device: torch.device, bf16: bool, warmup: int, steps: int) -> dict:
    """Warm-up steps, then the median of `steps` timed steps; meant to run alone in its own process."""
    base_mib = peak_mib(device) if device.type == "cpu" else 0.0
    torch.manual_seed(0)
    model = build_variant(name, cfg).to(device)
    step = make_step(name, model, cfg, device, bf16)
    times = time_steps(name, step, device, warmup, steps)
    peak = peak_mib(device)  # before the FLOP count: its math attention needs more
    return {
        "variant": name,
        "trainable_params": trainable_params(model),
        "gflop": count_flops(step) / 1e9,
        "step_s": statistics.median(times),
        "times_s": times,
        "peak_mib": peak,
        "base_mib": base_mib,
    }


def run_in_subprocess(name: str, argv: list[str], script: str = __file__) -> dict:
    """Run `script ... --worker name` and return the JSON result it prints last: one variant per process."""
    worker = subprocess.run([sys.executable, script, *argv, "--worker", name], stdout=subprocess.PIPE, text=True)
    if worker.returncode:
        sys.exit(f"Variant '{name}' failed in its subprocess (exit {worker.returncode}); its error is printed above.")
    return json.loads(worker.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], device: torch.device, cfg: BenchConfig, dtype: str) -> float:
    """Print the comparison; return how many times faster the ViT-Split step is than the adapter baseline's."""
    by_name = {r["variant"]: r for r in results}
    split, adapter = by_name["vit-split"], by_name["full+adapter"]
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS of the variant's process"
    shape = "ViT-B/14" if cfg.hidden_size == 768 else f"{cfg.hidden_size}-wide {cfg.num_layers}-block"
    print(f"\n{shape} DINOv2 (random init), {cfg.image_size} px, batch {cfg.batch_size}, {device.type}, {dtype}")
    if device.type == "cpu":
        print(
            f"CPU ({torch.get_num_threads()} threads): absolute times are NOT meaningful, only the ratios (and FLOPs); "
            f"peak memory includes ~{split['base_mib']:.0f} MiB of interpreter + torch."
        )
    print(
        f"{'variant':<14}{'trainable M':>12}{'GFLOP':>9}{'x FLOP':>8}{'step s':>9}{'x time':>8}{'peak MiB':>10}"
        f"   x = vs ViT-Split; memory = {memory}"
    )
    for r in results:
        print(
            f"{r['variant']:<14}{r['trainable_params'] / 1e6:>12.2f}{r['gflop']:>9.0f}{r['gflop'] / split['gflop']:>8.2f}"
            f"{r['step_s']:>9.3f}{r['step_s'] / split['step_s']:>8.2f}{r['peak_mib']:>10.0f}   {DESCRIPTIONS[r['variant']]}"
        )
    speedup = adapter["step_s"] / split["step_s"]
    print(
        f"ViT-Split step is {speedup:.2f}x faster than the adapter baseline ({adapter['gflop'] / split['gflop']:.2f}x "
        "fewer FLOPs); the paper claims up to 4x less training time than adapters."
    )
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast (for GPUs)")
    parser.add_argument("--batch-size", type=int, default=BenchConfig.batch_size)
    parser.add_argument("--image-size", type=int, default=BenchConfig.image_size)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (the median is reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny tower, one step per variant in one process: checks, not figures")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant, JSON to stdout
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device; run on a GPU machine or use --device cpu.")
    cfg = smoke_config() if args.smoke else BenchConfig(batch_size=args.batch_size, image_size=args.image_size)
    if args.smoke:
        args.warmup, args.steps = 0, 1
    if cfg.image_size % cfg.patch_size:
        parser.error(f"--image-size {cfg.image_size} must be a multiple of the patch size {cfg.patch_size}.")
    if args.worker:
        print(json.dumps(measure(args.worker, cfg, device, args.dtype == "bf16", args.warmup, args.steps)))
        return
    results = []
    for i, name in enumerate(VARIANTS, 1):
        print(f"[{i}/{len(VARIANTS)}] {name}: {DESCRIPTIONS[name]}", file=sys.stderr, flush=True)
        if args.smoke:
            results.append(measure(name, cfg, device, args.dtype == "bf16", args.warmup, args.steps))
        else:
            results.append(run_in_subprocess(name, sys.argv[1:]))
    speedup = print_table(results, device, cfg, args.dtype)
    if args.json_out:
        summary = {
            "config": asdict(cfg),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
            "dtype": args.dtype,
            "warmup": args.warmup,
            "steps": args.steps,
            "results": results,
            "split_speedup_vs_adapter": speedup,
        }
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
