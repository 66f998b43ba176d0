"""Train a segmentation or depth head on a ViT-Split module (HF Trainer; plain python, accelerate or DeepSpeed).

    python scripts/train_dense.py --task seg                       # synthetic ADE20K-layout set, tiny demo tower
    python scripts/train_dense.py --task depth train.max_steps=500  # dotted key=value overrides
    python scripts/train_dense.py --config configs/dense_seg.yaml --init-from-vlm runs/vlm/final
    deepspeed --num_gpus 2 scripts/train_dense.py --task seg --deepspeed configs/deepspeed/zero2.json

Writes <output_dir>/model (config.json + model.safetensors), metrics.json, train.log, loss_curve.png and
TensorBoard events, and prints the validation metrics (sliding-window inference).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vitsplit_vlm.config import load_config  # noqa: E402
from vitsplit_vlm.dense.train import DenseRunConfig, train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["seg", "depth"], help="sets model.task; default config: configs/dense_<task>.yaml")
    parser.add_argument("--config", help="YAML run config (see configs/dense_seg.yaml)")
    parser.add_argument("--init-from-vlm", help="VLM checkpoint dir whose split module (tower + heads) to train on")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON, e.g. configs/deepspeed/zero2.json")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args()
    if not (args.task or args.config):
        parser.error("give --task seg|depth or --config FILE")
    overrides = [f"model.task={args.task}"] if args.task else []
    if args.init_from_vlm:
        overrides.append(f"init_from_vlm={args.init_from_vlm}")
    if args.deepspeed:
        overrides.append(f"train.deepspeed={args.deepspeed}")
    cfg = load_config(DenseRunConfig, args.config or CONFIGS / f"dense_{args.task}.yaml", overrides + args.overrides)
    metrics = train(cfg)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
