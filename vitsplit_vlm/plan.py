"""Will a training stage fit? Sizes a run config on the meta device before any GPU hour is spent.

    python -m vitsplit_vlm.plan --config configs/stage2_instruct.yaml --gpus 8 --gpu-memory 80 \\
        --vision_tower checkpoints/clip-vit-large-patch14-336 --language_model checkpoints/vicuna-7b-v1.5

The model is built from the components' configs alone (`accelerate.init_empty_weights`: no weights are read or
allocated, so a directory holding only config.json, and the tokenizer, is enough). Printed: parameters per part
(total / trainable, LoRA adapters included), DeepSpeed's model-state estimates for ZeRO-2 and ZeRO-3, activations at
the stage's micro-batch x sequence length with and without gradient checkpointing, steps per epoch from the data
file, and for each shipped DeepSpeed config whether the stage fits in the GPU memory given, else what would
(LoRA, offload, a smaller micro-batch). See `vitsplit_vlm.memory` for how each figure is computed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import config_argument, load_config, parse_with_overrides, resolve_config, shipped_config_names
from .memory import GIB, ActivationEstimate, largest_module_params, model_states, stage_activations
from .train.config import ConfigError, RunConfig, StageConfig, component_overrides, stages

OVERHEAD_GIB = 2.0  # CUDA context, allocator fragmentation, communication buckets: kept free on every GPU


@dataclass(frozen=True)
class Counts:
    rows: list[tuple[str, int, int]]  # (part, trainable, total)
    lora: int  # adapter parameters (trainable, not in rows' totals)
    largest_layer: int

    @property
    def trainable(self) -> int:
        return sum(t for _, t, _ in self.rows) + self.lora

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.rows) + self.lora


def vlm_config(config: RunConfig, vision_tower: str, language_model: str):
    """The VLM config a run config gives with these components, from their configs alone (a tokenizer next to the
    LM, if present, grows the vocabulary as `from_components` would)."""
    from transformers import AutoConfig, AutoTokenizer

    from .models import VitSplitLlavaConfig
    from .models.tokenizer import prepare_tokenizer
    from .vision import resolve_split
    from .vision.towers import vision_config_of

    vision = vision_config_of(AutoConfig.from_pretrained(vision_tower))
    text = AutoConfig.from_pretrained(language_model)
    try:
        text.vocab_size = max(text.vocab_size, len(prepare_tokenizer(AutoTokenizer.from_pretrained(language_model))))
    except (OSError, ValueError):
        pass  # no tokenizer saved: the LM's own vocabulary
    return VitSplitLlavaConfig(
        vision_config=vision, text_config=text, split=resolve_split(config.model.split, config.model.split_options),
        projector_type=config.model.projector_type, image_token_id=text.vocab_size - 1,
    )


def meta_model(config: RunConfig, vision_tower: str, language_model: str):
    """The stage's model on the meta device, from config-only directories."""
    from accelerate import init_empty_weights

    from .models import VitSplitLlavaForConditionalGeneration

    model_cfg = vlm_config(config, vision_tower, language_model)
    with init_empty_weights():
        return VitSplitLlavaForConditionalGeneration(model_cfg)


def lora_parameters(model, stage: StageConfig) -> int:
    """r x (in + out) per targeted LM linear layer, as peft adds them."""
    if not stage.lora.enabled:
        return 0
    from torch import nn

    return sum(
        stage.lora.r * (m.in_features + m.out_features) for name, m in model.language_model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in stage.lora.target_modules
    )


def count(model, stage: StageConfig) -> Counts:
    model.set_trainable(stage.train_parts)
    rows = [(r.part, r.trainable, r.total) for r in model.trainable_parameter_table()]
    return Counts(rows, lora_parameters(model, stage), largest_module_params(model))


def activations(model, stage: StageConfig, batch: int) -> ActivationEstimate:
    text, vision = model.config.text_config, model.config.vision_config
    split = model.vision
    fusion = 0
    if split.task_blocks is not None:  # prior head + fusion conv maps per visual token (bf16, both convs' outputs)
        hidden = split.parts.hidden_size
        fusion = 2 * (len(split.prior_indices) * hidden + 2 * hidden + 2 * hidden + 2 * split.out_channels * 2)
    return stage_activations(
        batch=batch, seq_len=stage.data.model_max_length, image_tokens=model.num_image_tokens,
        lm_layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
        vocab=text.vocab_size, vision_tokens=model.num_image_tokens + split.parts.num_prefix_tokens,
        vision_hidden=vision.hidden_size, vision_intermediate=vision.intermediate_size,
        task_layers=len(split.task_blocks or []), fusion_bytes_per_token=fusion,
    )


def records(stage: StageConfig) -> int | None:
    """Records in the stage's data file(s); None when a file is not there."""
    files = stage.data.train_json
    files = [files] if isinstance(files, str) else list(files or [])
    if not files or not all(Path(f).is_file() for f in files):
        return None
    return sum(len(json.loads(Path(f).read_text())) for f in files)


@dataclass(frozen=True)
class Fit:
    name: str
    gpu_bytes: int
    cpu_bytes: int
    activation_bytes: int
    cpu_offload: bool

    def total(self) -> int:
        return self.gpu_bytes + self.activation_bytes + int(OVERHEAD_GIB * GIB)


def deepspeed_fits(counts: Counts, acts: ActivationEstimate, checkpointing: bool, gpus: int) -> list[Fit]:
    frozen = counts.total - counts.trainable
    act = acts.with_checkpointing if checkpointing else acts.without_checkpointing
    out = []
    for name in shipped_config_names("deepspeed"):
        zero = json.loads(resolve_config(name, "deepspeed").read_text())["zero_optimization"]
        offload = "offload_optimizer" in zero
        states = model_states(zero["stage"], offload, counts.trainable, frozen, counts.largest_layer, gpus)
        out.append(Fit(name, states.gpu_bytes, states.cpu_bytes, act, offload))
    return out


def _gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"


def report(name: str, stage: StageConfig, model, gpus: int, gpu_memory: float, host_memory: float | None = None) -> str:
    counts = count(model, stage)
    batch = stage.per_device_train_batch_size
    acts = activations(model, stage, batch)
    ckpt = stage.gradient_checkpointing
    budget = gpu_memory * GIB
    lines = [f"{name}: {gpus} GPU(s) x {gpu_memory:g} GiB; micro-batch {batch} x {stage.data.model_max_length} tokens "
             f"({model.num_image_tokens} image tokens), gradient accumulation {stage.gradient_accumulation_steps}, "
             f"gradient checkpointing {'on' if ckpt else 'off'}, DeepSpeed {Path(stage.deepspeed).stem if stage.deepspeed else 'none'}",
             "", f"{'part':<16}{'trainable':>16}{'total':>16}"]
    lines += [f"{part:<16}{t:>16,}{n:>16,}" for part, t, n in counts.rows]
    if counts.lora:
        lines.append(f"{'lora adapters':<16}{counts.lora:>16,}{counts.lora:>16,}")
    lines.append(f"{'all':<16}{counts.trainable:>16,}{counts.total:>16,}")
    lines += ["", f"activations per GPU: {_gib(acts.without_checkpointing)} without gradient checkpointing, "
              f"{_gib(acts.with_checkpointing)} with"]
    n = records(stage)
    per_step = batch * gpus * stage.gradient_accumulation_steps
    if n is None:
        lines.append(f"data: {stage.data.train_json or 'synthetic'} not found here; steps per epoch = records / {per_step}")
    else:
        lines.append(f"data: {n:,} records / ({batch} x {gpus} GPUs x {stage.gradient_accumulation_steps}) = "
                     f"{math.ceil(n / per_step):,} steps per epoch")
    lines += ["", f"per GPU (model states from DeepSpeed's estimators + activations + {OVERHEAD_GIB:g} GiB overhead):"]
    fits = deepspeed_fits(counts, acts, ckpt, gpus)
    for fit in fits:
        verdict = "fits" if fit.total() <= budget else "does NOT fit"
        if host_memory is not None and fit.cpu_bytes > host_memory * GIB:
            verdict = "does NOT fit (host RAM)"
        cpu = f", host RAM {_gib(fit.cpu_bytes)} per node" if fit.cpu_bytes else ""
        lines.append(f"  {fit.name:<14} states {_gib(fit.gpu_bytes)} + activations {_gib(fit.activation_bytes)} = "
                     f"{_gib(fit.total())}{cpu}: {verdict}")
    host = None if host_memory is None else host_memory * GIB
    lines += ["", verdict_line(stage, model, fits, budget, host, acts, ckpt)]
    return "\n".join(lines)


def _largest_batch(stage: StageConfig, model, fits: list[Fit], budget: float, ckpt: bool) -> tuple[int, str] | None:
    """The largest micro-batch below the configured one at which a config that keeps everything on the GPU fits."""
    for batch in range(stage.per_device_train_batch_size - 1, 0, -1):
        acts = activations(model, stage, batch)
        act = acts.with_checkpointing if ckpt else acts.without_checkpointing
        ok = [f.name for f in fits if not f.cpu_offload and f.gpu_bytes + act + OVERHEAD_GIB * GIB <= budget]
        if ok:
            return batch, ok[0]
    return None


def verdict_line(stage, model, fits: list[Fit], budget: float, host: float | None, acts: ActivationEstimate,
                 ckpt: bool) -> str:
    chosen = Path(stage.deepspeed).stem if stage.deepspeed else None
    fitting = [f for f in fits if f.total() <= budget and (host is None or f.cpu_bytes <= host)]
    if chosen in [f.name for f in fitting]:
        return f"verdict: the configured {chosen} fits."
    on_gpu = [f.name for f in fitting if not f.cpu_offload]
    if on_gpu:
        return f"verdict: {chosen or 'no DeepSpeed'} does not fit; use {on_gpu[0]} (stage.deepspeed={on_gpu[0]})."
    if not ckpt and any(f.gpu_bytes + acts.with_checkpointing + OVERHEAD_GIB * GIB <= budget for f in fits):
        return "verdict: nothing fits as configured; turn on gradient_checkpointing."
    options = []
    if smaller := _largest_batch(stage, model, fits, budget, ckpt):
        options.append(f"{smaller[1]} at per_device_train_batch_size={smaller[0]} (raise gradient_accumulation_steps "
                       "to keep the global batch)")
    if fitting:
        options.append(f"{fitting[0].name} (optimizer and weights offloaded to host RAM: "
                       f"{_gib(fitting[0].cpu_bytes)} per node, slower steps)")
    if not stage.lora.enabled:
        options.append("LoRA on the LM (configs/stage2_lora.yaml)")
    if not options:
        return "verdict: nothing fits; use more GPUs or GPUs with more memory."
    return f"verdict: {chosen or 'no DeepSpeed'} does not fit; options: " + "; ".join(options) + "."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vitsplit_vlm.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=config_argument, required=True,
                        help=f"run config: a YAML path or a shipped name ({', '.join(shipped_config_names())})")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in the run (default: %(default)s)")
    parser.add_argument("--gpu-memory", type=float, default=80, help="GiB per GPU (default: %(default)s)")
    parser.add_argument("--host-memory", type=float, help="GiB of host RAM per node, checked against offload (default: unchecked)")
    parser.add_argument("--vision_tower", help="tower dir (a config-only dir is enough); overrides model.vision_tower")
    parser.add_argument("--language_model", help="LM dir (config.json, and the tokenizer if any); overrides model.language_model")
    parser.add_argument("--stage", help="the stage to plan (default: every stage of the config)")
    return parse_with_overrides(parser, argv, "stage2.per_device_train_batch_size=8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(RunConfig, args.config, component_overrides(args))
        chosen = [(n, s) for n, s in stages(config) if args.stage in (None, n)]
        if not chosen:
            raise ConfigError(f"--stage {args.stage}: the config has {', '.join(n for n, _ in stages(config)) or 'no stage'}")
        for key in ("vision_tower", "language_model"):
            path = getattr(config.model, key)
            if not path or not Path(path, "config.json").is_file():
                raise ConfigError(f"model.{key}={path}: no config.json there; pass --{key} DIR (a config-only dir is enough)")
        if args.gpus < 1 or args.gpu_memory <= 0:
            raise ConfigError("--gpus must be >= 1 and --gpu-memory > 0")
        model = meta_model(config, config.model.vision_tower, config.model.language_model)
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # a projector / width mismatch comes as ValueError
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: {config.model.vision_tower} + {config.model.language_model}, split {config.model.split}, "
          f"projector {config.model.projector_type}")
    for name, stage in chosen:
        print()
        print(report(name, stage, model, args.gpus, args.gpu_memory, args.host_memory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
