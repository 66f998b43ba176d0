"""Train a segmentation or depth head on a ViT-Split module (HF Trainer; plain python, accelerate or DeepSpeed).

    vitsplit-train-dense --task seg                                 # synthetic ADE20K-layout set, tiny demo tower
    python scripts/train_dense.py --task depth train.max_steps=500  # dotted key=value overrides
    python scripts/train_dense.py --config dense_seg --init-from-vlm runs/vlm/final
    deepspeed --num_gpus 2 scripts/train_dense.py --task seg --deepspeed zero2

Writes <output_dir>/model (config.json + model.safetensors), metrics.json, train.log, loss_curve.png and
TensorBoard events, and prints the validation metrics (sliding-window inference).
"""
from __future__ import annotations

import argparse
import json

from ..config import config_argument, load_config, parse_with_overrides
from ..errors import run_cli
from .tasks import TASKS
from .train import DenseRunConfig, train


def main(argv: list[str] | None = None) -> int:
    """The CLI: a mistake in the config or the paths it names prints one line and exits 2."""
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), help="sets model.task; default config: the shipped dense_<task>")
    parser.add_argument("--config", type=config_argument, help="run config: a YAML file or a shipped name (dense_seg, dense_depth)")
    parser.add_argument("--init-from-vlm", help="VLM checkpoint dir whose split module (tower + heads) to train on")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON file or shipped name (zero2)")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = parse_with_overrides(parser, argv, "train.max_steps=100")
    if not (args.task or args.config):
        parser.error(f"give --task {'|'.join(sorted(TASKS))} or --config FILE")
    overrides = [f"model.task={args.task}"] if args.task else []
    if args.init_from_vlm:
        # The VLM checkpoint holds its split: the config's model.split does not apply.
        overrides += [f"init_from_vlm={args.init_from_vlm}", "model.split=null", "model.split_options=null"]
    if args.deepspeed:
        overrides.append(f"train.deepspeed={args.deepspeed}")
    cfg = load_config(DenseRunConfig, args.config or f"dense_{args.task}", overrides + args.overrides)
    metrics = train(cfg)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
