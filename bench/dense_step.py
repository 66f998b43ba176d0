"""Train-step cost at 512 px segmentation: ViT-Split + linear head against ViT-Adapter + UperNet and full fine-tuning.

The paper's efficiency claim is against ViT-Adapter (ADE20K, 512 px crops, 150 classes): "up to 4x" less training
time. Each variant here is the real model shape at ViT-S and ViT-B (random weights), trained on one 512 x 512 batch
with 150-class cross-entropy at full label resolution, as mmseg computes it:

  vit-split          frozen DINOv2 + ViT-Split (preset dinov2-s/-b, deformable 3x3 convs) + the paper's linear head
  vit-split-plain    the same with plain 3x3 convs: the difference is the deformable option's cost
  full               DINOv2 fully fine-tuned + the same linear head (DINOv2's "linear" baseline)
  vit-adapter        ViT-Adapter (czczup/ViT-Adapter, segmentation/mmseg_custom/models/backbones/vit_adapter.py and
                     adapter_modules.py at 5cf0b2d): a patch-16 ViT fully fine-tuned, the spatial prior module, four
                     injector/extractor interactions with multi-scale deformable attention in its pure-PyTorch
                     grid_sample form (ms_deform_attn_core_pytorch), ConvFFN, two extra extractors, then UperNet
                     (PPM + FPN, 512 channels) and the auxiliary FCN head (weight 0.4), as its ADE20K configs

Each variant runs in its own long-lived process (so peak memory is its own), and the variants of a size are stepped
in interleaved rounds (A, B, C, A, B, C; bench/interleaved.py) after warm-up rounds, so a change of load on a shared
machine hits every variant alike; FLOPs are counted with torch's FlopCounterMode on one extra, untimed step.

    python bench/dense_step.py                       # ViT-S and ViT-B, 512 px, batch 2, 1 warm-up + 3 timed rounds
    python bench/dense_step.py --sizes s --repeats 2 --threads 1 --json dense_step.json   # a busy CPU
    python bench/dense_step.py --smoke               # tiny shapes at 64 px, seconds: checks every variant steps
    python bench/dense_step.py --device cuda --batch-size 8 --json dense_step.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402  (the benches' shared FLOP count)
from interleaved import Worker, interleaved_rounds, serve  # noqa: E402  (one live process per variant, in rounds)
from vision_step import BenchConfig, build_tower, trainable_params  # noqa: E402  (the sibling bench's helpers)

from vitsplit_vlm.dense import DenseModelConfig, DenseSplitModel, LinearSegHead  # noqa: E402
from vitsplit_vlm.peak_memory import peak_mib  # noqa: E402
from vitsplit_vlm.vision import ViTSplit, resolve_split  # noqa: E402

VARIANTS = ("vit-split", "vit-split-plain", "full", "vit-adapter")


@dataclass
class DenseBenchConfig:
    size: str = "s"  # "s" (ViT-S) | "b" (ViT-B) | "tiny" (smoke)
    image_size: int = 512
    batch_size: int = 2
    num_classes: int = 150


SHAPES = {  # hidden, heads, ViT-Adapter's deformable-attention heads and value ratio (its ADE20K S/B configs)
    "s": dict(hidden=384, layers=12, heads=6, deform_heads=6, deform_ratio=1.0, upernet=512, aux=256),
    "b": dict(hidden=768, layers=12, heads=12, deform_heads=12, deform_ratio=0.5, upernet=512, aux=256),
    "tiny": dict(hidden=32, layers=4, heads=2, deform_heads=2, deform_ratio=1.0, upernet=16, aux=8),
}


def _tower(cfg: DenseBenchConfig, patch_size: int):
    shape = SHAPES[cfg.size]
    return build_tower(BenchConfig(
        hidden_size=shape["hidden"], num_layers=shape["layers"], num_heads=shape["heads"], patch_size=patch_size,
        image_size=cfg.image_size,
    ))


# ---------------------------------------------------------------- ViT-Adapter, re-implemented from its paper code


def ms_deform_attn_core(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention, grid_sample form. value B x S x heads x d (levels concatenated),
    locations B x Q x heads x levels x points x 2 in [0, 1] (x, y), weights B x Q x heads x levels x points."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], dim=1), shapes)):
        value_l = value_l.flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*heads) x Q x points x 2
        sampled.append(F.grid_sample(value_l, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*heads) x d x Q
    return out.view(batch, heads * dim, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable DETR's attention module: per query, heads x levels x points sampled offsets and softmax weights."""

    def __init__(self, dim: int, levels: int, heads: int, points: int = 4, ratio: float = 1.0):
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.value_proj = nn.Linear(dim, int(dim * ratio))
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.output_proj = nn.Linear(int(dim * ratio), dim)

    def forward(self, query, reference, feat, shapes):
        batch, queries, _ = query.shape
        value = self.value_proj(feat).view(batch, feat.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))


def reference_points(shapes: list[tuple[int, int]], levels: int, device) -> torch.Tensor:
    """Pixel-centre coordinates in [0, 1] of every query position (all levels), repeated for `levels` value levels."""
    refs = []
    for h, w in shapes:
        y, x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=device) / h,
                              torch.linspace(0.5, w - 0.5, w, device=device) / w, indexing="ij")
        refs.append(torch.stack([x.flatten(), y.flatten()], -1))
    return torch.cat(refs)[None, :, None].expand(-1, -1, levels, -1)


class ConvFFN(nn.Module):
    """Linear -> depth-wise 3x3 per pyramid level (1/8, 1/16, 1/32) -> GELU -> linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x, shapes):
        x = self.fc1(x)
        parts = []
        for part, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            grid = part.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            parts.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.fc2(F.gelu(torch.cat(parts, 1)))


class Extractor(nn.Module):
    def __init__(self, dim, heads, ratio):
        super().__init__()
        self.query_norm, self.feat_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 1, heads, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * 0.25))

    def forward(self, c, x, c_shapes, x_shape):
        c = c + self.attn(self.query_norm(c), reference_points(c_shapes, 1, c.device), self.feat_norm(x), [x_shape])
        return c + self.ffn(self.ffn_norm(c), c_shapes)


class Injector(nn.Module):
    def __init__(self, dim, heads, ratio):
        super().__init__()
        self.query_norm, self.feat_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 3, heads, ratio=ratio)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x, c, x_shape, c_shapes):
        attn = self.attn(self.query_norm(x), reference_points([x_shape], 3, x.device), self.feat_norm(c), c_shapes)
        return x + self.gamma * attn


def _conv_bn_relu(in_ch, out_ch, kernel=3, stride=1):
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]


class SpatialPriorModule(nn.Module):
    """ResNet-like stem; c1 at 1/4 stays a map, c2..c4 (1/8..1/32) become tokens; all projected to the ViT width."""

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, width, stride=2), *_conv_bn_relu(width, width),
                                  *_conv_bn_relu(width, width), nn.MaxPool2d(3, 2, 1))
        widths = [width, 2 * width, 4 * width, 4 * width]
        self.convs = nn.ModuleList(nn.Sequential(*_conv_bn_relu(widths[i], widths[i + 1], stride=2)) for i in range(3))
        self.fcs = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in widths)

    def forward(self, pixels):
        maps = [self.stem(pixels)]
        for conv in self.convs:
            maps.append(conv(maps[-1]))
        return [fc(m) for fc, m in zip(self.fcs, maps)]


class ViTAdapter(nn.Module):
    """Patch-16 ViT (fully trained) + SPM + 4 interactions (blocks [0-2], [3-5], [6-8], [9-11]) -> 4-level pyramid."""

    def __init__(self, tower, dim: int, heads: int, ratio: float):
        super().__init__()
        self.tower = tower
        blocks = len(tower.encoder.layer)
        per = blocks // 4
        self.groups = [range(i * per, (i + 1) * per) for i in range(4)]
        self.spm = SpatialPriorModule(dim)
        self.level_embed = nn.Parameter(torch.randn(3, dim))
        self.injectors = nn.ModuleList(Injector(dim, heads, ratio) for _ in range(4))
        self.extractors = nn.ModuleList(Extractor(dim, heads, ratio) for _ in range(4 + 2))  # + 2 extra at the end
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(4))

    def forward(self, pixels):
        batch = pixels.shape[0]
        c1, *levels = self.spm(pixels)
        c_shapes = [tuple(m.shape[-2:]) for m in levels]
        c = torch.cat([(m + e.view(1, -1, 1, 1)).flatten(2).transpose(1, 2) for m, e in zip(levels, self.level_embed)], 1)
        x = self.tower.embeddings(pixels)[:, 1:]  # patch tokens + interpolated position embeddings; CLS dropped
        x_shape = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
        outs = []
        for i, group in enumerate(self.groups):
            x = self.injectors[i](x, c, x_shape, c_shapes)
            for index in group:
                x = self.tower.encoder.layer[index](x)
                x = x[0] if isinstance(x, tuple) else x
            for extractor in self.extractors[i:i + 1] if i < 3 else self.extractors[3:]:
                c = extractor(c, x, c_shapes, x_shape)
            outs.append(x.transpose(1, 2).reshape(batch, -1, *x_shape))
        split = [h * w for h, w in c_shapes]
        c2, c3, c4 = [t.transpose(1, 2).reshape(batch, -1, *s) for t, s in zip(c.split(split, 1), c_shapes)]
        c1 = self.up(c2) + c1
        pyramid = [c1, c2, c3, c4]
        for k in range(4):  # the ViT's map after each interaction, resized to the level (x4, x2, x1, x0.5)
            pyramid[k] = pyramid[k] + F.interpolate(outs[k], size=pyramid[k].shape[-2:], mode="bilinear", align_corners=False)
        return [norm(level) for norm, level in zip(self.norms, pyramid)]


class UperNetHead(nn.Module):
    """mmseg's UPerHead (PPM over the coarsest level + FPN, 3x3 fusion) and the auxiliary FCNHead on level 3."""

    def __init__(self, dim: int, channels: int, aux_channels: int, num_classes: int, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), *_conv_bn_relu(dim, channels, 1)) for s in pool_scales)
        self.bottleneck = nn.Sequential(*_conv_bn_relu(dim + len(pool_scales) * channels, channels))
        self.lateral = nn.ModuleList(nn.Sequential(*_conv_bn_relu(dim, channels, 1)) for _ in range(3))
        self.fpn = nn.ModuleList(nn.Sequential(*_conv_bn_relu(channels, channels)) for _ in range(3))
        self.fuse = nn.Sequential(*_conv_bn_relu(4 * channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux = nn.Sequential(*_conv_bn_relu(dim, aux_channels), nn.Conv2d(aux_channels, num_classes, 1))

    def forward(self, levels):
        top = levels[3]
        pooled = [F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for p in self.ppm]
        lat = [conv(level) for conv, level in zip(self.lateral, levels[:3])] + [self.bottleneck(torch.cat([top, *pooled], 1))]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [self.fpn[i](lat[i]) for i in range(3)] + [lat[3]]
        outs = [F.interpolate(o, size=outs[0].shape[-2:], mode="bilinear", align_corners=False) for o in outs]
        return self.classifier(self.fuse(torch.cat(outs, 1))), self.aux(levels[2])


class AdapterSegmenter(nn.Module):
    def __init__(self, cfg: DenseBenchConfig):
        super().__init__()
        shape = SHAPES[cfg.size]
        self.backbone = ViTAdapter(_tower(cfg, 16), shape["hidden"], shape["deform_heads"], shape["deform_ratio"])
        self.head = UperNetHead(shape["hidden"], shape["upernet"], shape["aux"], cfg.num_classes)

    def loss(self, pixels, labels):
        logits, aux = self.head(self.backbone(pixels))
        size = labels.shape[-2:]
        main = F.cross_entropy(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), labels)
        return main + 0.4 * F.cross_entropy(F.interpolate(aux, size=size, mode="bilinear", align_corners=False), labels)


class FullFineTune(nn.Module):
    """DINOv2 trained end to end, its normed last-layer patch map into the paper's linear head."""

    def __init__(self, cfg: DenseBenchConfig):
        super().__init__()
        self.backbone = _tower(cfg, 14)
        self.head = LinearSegHead(SHAPES[cfg.size]["hidden"], cfg.num_classes)

    def loss(self, pixels, labels):
        padded = F.pad(pixels, (0, (-pixels.shape[-1]) % 14, 0, (-pixels.shape[-2]) % 14))
        grid = (padded.shape[-2] // 14, padded.shape[-1] // 14)
        tokens = self.backbone(pixel_values=padded).last_hidden_state[:, 1:]
        logits = self.head(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid))
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels)


class SplitSegmenter(nn.Module):
    """The library's own DenseSplitModel: frozen DINOv2 + ViT-Split + linear head, loss at label resolution."""

    def __init__(self, cfg: DenseBenchConfig, deformable: bool):
        super().__init__()
        preset = {"s": "dinov2-s", "b": "dinov2-b", "tiny": "dinov2-s"}[cfg.size]
        options = {"deformable": deformable} | ({"prior_layers": [1, 3], "task_layers": 1} if cfg.size == "tiny" else {})
        split = ViTSplit(_tower(cfg, 14), resolve_split(preset, options))
        self.model = DenseSplitModel(split, DenseModelConfig(task="seg", num_classes=cfg.num_classes))

    def loss(self, pixels, labels):
        return self.model(pixels, labels).loss


def build_variant(name: str, cfg: DenseBenchConfig) -> nn.Module:
    if name in ("vit-split", "vit-split-plain"):
        return SplitSegmenter(cfg, deformable=name == "vit-split").train()
    if name == "full":
        return FullFineTune(cfg).train()
    if name == "vit-adapter":
        return AdapterSegmenter(cfg).train()
    raise ValueError(f"Unknown variant '{name}'. Known: {', '.join(VARIANTS)}.")


def make_step(model: nn.Module, cfg: DenseBenchConfig, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator).to(device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size, cfg.image_size, cfg.image_size), generator=generator)
    labels = labels.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model.loss(pixels, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def counted(name: str, cfg: DenseBenchConfig) -> dict:
    """Trainable parameters and the FLOPs of one step (torch's FlopCounterMode), on the meta device: the count needs
    shapes only, so it costs no memory and no time, equals the count on a real device (tested), and covers variants
    too big to step on the machine at hand."""
    meta = torch.device("meta")
    with meta:
        model = build_variant(name, cfg)
    return {"variant": name, "size": cfg.size, "trainable_params": trainable_params(model),
            "gflop": count_flops(make_step(model, cfg, meta)) / 1e9}


def build_worker(name: str, cfg: DenseBenchConfig, device: torch.device) -> tuple[Callable[[], None], dict]:
    """The variant's step closure and the memory before it was built (in the worker's own process)."""
    base_mib = peak_mib(device) if device.type == "cpu" else 0.0
    torch.manual_seed(0)
    model = build_variant(name, cfg).to(device)
    return make_step(model, cfg, device), {"base_mib": base_mib}


def measure_size(size: str, variants: list[str], untimed: set[str], cfg: DenseBenchConfig, warmup: int, repeats: int,
                 argv: list[str]) -> list[dict]:
    """FLOPs and parameters of every variant; the timed ones each in its own live process, stepped in interleaved
    rounds, then their peak memory."""
    size_cfg = replace(cfg, size=size)
    results = {name: counted(name, size_cfg) for name in variants}
    workers = {}
    for name in variants:
        if name in untimed:
            continue
        print(f"  building ViT-{size.upper()} {name}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, *argv, "--worker", f"{name}:{size}"]
        workers[name] = Worker(f"ViT-{size.upper()} {name}", command)
    timed = interleaved_rounds(workers, warmup, repeats)
    for name, worker in workers.items():
        times = [reply["step_s"] for reply in timed[name]]
        results[name] |= {**worker.info, **worker.finish(), "step_s": statistics.median(times), "times_s": times}
    return list(results.values())


def _ratio_range(numerator: list[float], denominator: list[float]) -> str:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x per round" if len(ratios) > 1 else "one round"


def _time_columns(row: dict, ref: dict) -> str:
    if "step_s" not in row:
        return f"{'-':>9}{'-':>8}{'-':>10}"
    return f"{row['step_s']:>9.3f}{row['step_s'] / ref['step_s']:>8.2f}{row['peak_mib']:>10.0f}"


def print_table(results: list[dict], device: torch.device, cfg: DenseBenchConfig, threads: int) -> dict[str, float]:
    """The side-by-side table per size, then per size the ratios against ViT-Split and the deformable option's share
    of its step; returns the ViT-Adapter / ViT-Split step-time ratio by size (where both were timed)."""
    memory = "peak CUDA allocated" if device.type == "cuda" else "peak RSS of the variant's process"
    print(f"\n{cfg.image_size} px, batch {cfg.batch_size}, 150 classes, {device.type}, fp32; x = vs vit-split; "
          f"memory = {memory}; - = not timed (FLOPs and parameters counted on the meta device)")
    if device.type == "cpu":
        print(f"CPU ({threads} threads): absolute times are NOT meaningful, only the ratios and FLOPs.")
    print(f"{'size':<9}{'variant':<17}{'trainable M':>12}{'GFLOP':>9}{'x FLOP':>8}{'step s':>9}{'x time':>8}{'peak MiB':>10}")
    ratios = {}
    for size in dict.fromkeys(r["size"] for r in results):
        rows = {r["variant"]: r for r in results if r["size"] == size}
        ref = rows["vit-split"]
        for r in rows.values():
            print(f"{'ViT-' + size.upper():<9}{r['variant']:<17}{r['trainable_params'] / 1e6:>12.2f}{r['gflop']:>9.1f}"
                  f"{r['gflop'] / ref['gflop']:>8.2f}{_time_columns(r, ref)}")
        tag = f"ViT-{size.upper()}"
        for name, what in (("vit-adapter", "ViT-Adapter + UperNet"), ("full", "full fine-tuning")):
            if name in rows:
                other, timed = rows[name], "step_s" in rows[name] and "step_s" in ref
                time = (f"step time {other['step_s'] / ref['step_s']:.2f}x ({_ratio_range(other['times_s'], ref['times_s'])})"
                        if timed else "step time not measured")
                print(f"{tag}: {what} / ViT-Split: {time}, FLOPs {other['gflop'] / ref['gflop']:.2f}x"
                      + ("; the paper: up to 4x less training time" if name == "vit-adapter" else ""))
                if name == "vit-adapter" and timed:
                    ratios[size] = other["step_s"] / ref["step_s"]
        if "vit-split-plain" in rows:
            plain = rows["vit-split-plain"]
            flops = (f"{ref['gflop'] - plain['gflop']:+.1f} GFLOP, {(ref['gflop'] - plain['gflop']) / ref['gflop']:.1%} "
                     "of its FLOPs")
            if "step_s" in plain and "step_s" in ref:
                extra = [d - p for d, p in zip(ref["times_s"], plain["times_s"])]
                shares = sorted(e / d for e, d in zip(extra, ref["times_s"]))
                print(f"{tag}: the deformable 3x3 convs cost {statistics.median(extra):+.2f}s per step, "
                      f"{statistics.median(shares):.1%} of the ViT-Split step (per round {shares[0]:.1%}-{shares[-1]:.1%}), "
                      f"and {flops}")
            else:
                print(f"{tag}: the deformable 3x3 convs cost {flops}")
    return ratios


def parse_untimed(items: list[str], sizes: list[str]) -> dict[str, set[str]]:
    """`variant` or `variant:size` items -> the variants left untimed per size."""
    untimed: dict[str, set[str]] = {size: set() for size in sizes}
    for item in items:
        name, _, size = item.partition(":")
        if name not in VARIANTS or (size and size not in ("s", "b")):
            raise ValueError(f"--untimed {item}: give a variant ({', '.join(VARIANTS)}), optionally with :s or :b.")
        if name == "vit-split":
            raise ValueError("--untimed vit-split: ViT-Split's step is the reference of every time ratio; time it.")
        for target in ([size] if size else sizes):
            untimed.setdefault(target, set()).add(name)
    return untimed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sizes", nargs="+", choices=["s", "b"], default=["s", "b"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which variants to run (vit-split, the reference of every ratio, is always among them)")
    parser.add_argument("--batch-size", type=int, default=DenseBenchConfig.batch_size)
    parser.add_argument("--image-size", type=int, default=DenseBenchConfig.image_size)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds; a round steps every variant once, in turn (the median is reported)")
    parser.add_argument("--threads", type=int, help="torch threads in every variant's process (default: torch's)")
    parser.add_argument("--untimed", nargs="+", default=[], metavar="VARIANT[:SIZE]",
                        help="count FLOPs and parameters of these variants but do not step them (e.g. vit-adapter:b, "
                             "one whose memory the machine cannot hold)")
    parser.add_argument("--flops-only", action="store_true",
                        help="count FLOPs and parameters of every variant (meta device, seconds), step none")
    parser.add_argument("--smoke", action="store_true", help="tiny towers at 64 px: checks, not figures")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: "variant:size", serves steps on stdin
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device; run on a GPU machine or use --device cpu.")
    if "vit-adapter" in args.variants and args.batch_size < 2:  # as in mmseg: one value per BatchNorm channel
        parser.error("--batch-size must be at least 2 with vit-adapter: UperNet's BatchNorm cannot train on one "
                     "1x1 pooled map (leave vit-adapter out of --variants to run batch 1).")
    if args.batch_size < 1 or args.warmup < 0 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--batch-size, --repeats and --threads must be at least 1 and --warmup at least 0.")
    image_size = 64 if args.smoke else args.image_size
    if image_size % 32:
        parser.error(f"--image-size {image_size} must be a multiple of 32 (ViT-Adapter's 1/32 level).")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        name, size = args.worker.split(":")
        cfg = DenseBenchConfig(size=size, image_size=image_size, batch_size=args.batch_size)
        serve(*build_worker(name, cfg, device), device)
        return
    sizes = ["tiny"] if args.smoke else args.sizes
    try:
        untimed = parse_untimed(args.untimed, sizes)
    except ValueError as err:
        parser.error(str(err))
    variants = [name for name in VARIANTS if name in {"vit-split", *args.variants}]
    if args.flops_only:
        untimed = {size: set(variants) for size in sizes}
    cfg = DenseBenchConfig(image_size=image_size, batch_size=args.batch_size)
    threads = torch.get_num_threads()
    rounds = "FLOPs and parameters only" if args.flops_only else f"{args.warmup} warm-up + {args.repeats} timed rounds"
    print(f"{len(sizes)} size(s) x {len(variants)} variants, {rounds}, {threads} thread(s) per process",
          file=sys.stderr, flush=True)
    results = []
    for i, size in enumerate(sizes, 1):
        print(f"[{i}/{len(sizes)}] ViT-{size.upper()}: {', '.join(variants)}", file=sys.stderr, flush=True)
        results += measure_size(size, variants, untimed.get(size, set()), cfg, args.warmup, args.repeats, sys.argv[1:])
        if args.json_out:  # after every size: a long CPU run keeps what it measured if it is stopped
            summary = {"config": asdict(cfg), "sizes": sizes, "variants": variants, "untimed": sorted(args.untimed),
                       "device": device.type,
                       "warmup": args.warmup, "repeats": args.repeats, "threads": threads, "results": results}
            Path(args.json_out).write_text(json.dumps(summary, indent=2))
    print_table(results, device, cfg, threads)


if __name__ == "__main__":
    main()
