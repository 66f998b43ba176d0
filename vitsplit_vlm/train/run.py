"""`vitsplit-train` / `scripts/train_vqa.py`: stage 1 (alignment) and/or stage 2 (instruction tuning), then
held-out evaluation.

    deepspeed scripts/train_vqa.py                                  # embedded default: the shipped `demo` config
    python scripts/train_vqa.py --config stage1_align --vision_tower DIR --language_model DIR
    deepspeed --num_gpus 8 scripts/train_vqa.py --config stage2_instruct stage2.init_from=DIR ...
    deepspeed --module vitsplit_vlm.train.run --config my_run.yaml  # installed package, no clone

`--config` takes a YAML path or a shipped config's name (demo, stage1_align, stage2_instruct, stage2_lora).

Positional `key=value` arguments override the YAML (`stage2.max_steps=100`, `stage1.learning_rate=1e-3`). With no
`vision_tower`/`language_model`, tiny random checkpoints are built into the output dir; with no `train_json`, the
built-in synthetic VQA set is generated there. Runs under `python` (1 rank), `deepspeed` and `torchrun`.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import yaml

from ..config import config_argument, load_config, parse_with_overrides, shipped_config_names, to_dict
from ..errors import run_cli
from . import distributed
from .config import RunConfig, StageConfig, check_train_config, component_overrides, stages
from .evaluate import evaluate_stage
from .checkpoint import FINAL_DIR
from .logs import setup_logging
from .model_card import CARD_NAME, add_evaluation, write_model_card
from .model_setup import Components
from .stage import StageData, run_stage, stage_complete, trains_language_model

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=config_argument, default=DEFAULT_CONFIG,
                        help="run config: a YAML file or a shipped name (%s; default: %%(default)s)"
                        % ", ".join(shipped_config_names()))
    parser.add_argument("--vision_tower", help="vision tower checkpoint dir (overrides model.vision_tower)")
    parser.add_argument("--language_model", help="LM + tokenizer checkpoint dir (overrides model.language_model)")
    parser.add_argument("--output_dir", help="overrides output_dir")
    parser.add_argument("--resume", action="store_true", help="resume every stage from its latest checkpoint")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    return parse_with_overrides(parser, argv, "stage2.max_steps=100")


def build_config(args: argparse.Namespace) -> RunConfig:
    overrides = component_overrides(args)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(RunConfig, args.config, overrides)
    if args.resume:
        for name, _ in stages(config):
            setattr(config, name, replace(getattr(config, name), resume=True))
    check_train_config(config)
    return config


def resolve_components(config: RunConfig, output_dir: Path) -> Components:
    """The configured checkpoints, or tiny random ones (built once by the main process) for what is missing."""
    model = config.model
    if model.vision_tower and model.language_model:
        return Components(Path(model.vision_tower), Path(model.language_model))
    from ..tiny import build_tiny_checkpoints

    tiny_dir = output_dir / "tiny"
    if distributed.is_main_process() and not (tiny_dir / "llama" / "config.json").is_file():
        logger.info("building tiny '%s' checkpoints into %s", model.tiny_size, tiny_dir)
        build_tiny_checkpoints(tiny_dir, size=model.tiny_size, seed=config.seed)
    distributed.barrier()
    return Components(
        Path(model.vision_tower) if model.vision_tower else tiny_dir / model.tiny_tower,
        Path(model.language_model) if model.language_model else tiny_dir / "llama",
    )


def prepare_synthetic(config: RunConfig, data_dir: Path) -> Path:
    """Generate the synthetic VQA set once (main process); a set with the same settings is reused."""
    from ..data.synthetic import generate

    syn = config.synthetic
    stats = data_dir / "stats.json"
    wanted = {"num_train_images": syn.num_train, "num_val_images": syn.num_val, "image_size": syn.image_size, "seed": syn.seed,
              "questions_per_image": syn.questions_per_image}
    if distributed.is_main_process():
        existing = json.loads(stats.read_text()) if stats.is_file() else {}
        if any(existing.get(k) != v for k, v in wanted.items()):
            logger.info("generating the synthetic VQA set into %s", data_dir)
            generate(data_dir, syn.num_train, syn.num_val, syn.image_size, syn.seed, syn.questions_per_image)
    distributed.barrier()
    return data_dir


def _uses_synthetic(config: RunConfig) -> bool:
    return any(not stage.data.train_json for _, stage in stages(config)) or bool(config.eval and not config.eval.val_json)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _stage_data(stage: StageConfig, data_dir: Path) -> StageData:
    if stage.data.train_json:
        return StageData([Path(f) for f in _as_list(stage.data.train_json)], Path(stage.data.image_folder))
    return StageData([data_dir / f for f in _as_list(stage.data.synthetic_file)], data_dir / "images")


def main(argv: list[str] | None = None) -> int:
    """The CLI: a user mistake (config, checkpoint dir, data file) prints one line and exits 2."""
    return run_cli(lambda: train(argv))


def train(argv: list[str] | None = None) -> int:
    start = time.time()
    args = parse_args(argv)
    config = build_config(args)
    distributed.init_distributed(use_deepspeed=any(stage.deepspeed for _, stage in stages(config)))

    output_dir = Path(config.output_dir)
    main_process = distributed.is_main_process()
    setup_logging(output_dir / "train.log" if main_process else None, logging.INFO if main_process else logging.WARNING)
    logger.info("config %s:\n%s", args.config, yaml.safe_dump(to_dict(config), sort_keys=False))
    components = resolve_components(config, output_dir)
    logger.info("vision tower: %s\nlanguage model: %s", components.vision_tower, components.language_model)
    data_dir = prepare_synthetic(config, output_dir / "data") if _uses_synthetic(config) else output_dir / "data"

    init_from = None
    done: list[tuple[str, StageConfig, StageData]] = []
    for name, stage in stages(config):
        stage_dir = output_dir / name
        if stage.init_from:
            init_from = Path(stage.init_from)
        done.append((name, stage, _stage_data(stage, data_dir)))
        if stage.resume and stage_complete(stage, stage_dir):
            logger.info("%s: already complete in %s, skipped (resume)", name, stage_dir)
        else:
            result = run_stage(name, stage, config.model, components, done[-1][2], stage_dir, config.seed, init_from)
            if main_process and trains_language_model(stage):
                write_model_card(result.final_dir, config, components, done, result.trainable_table)
        # The next stage continues from this one: its projector/heads (LM frozen) or its whole model.
        init_from = stage_dir / FINAL_DIR if trains_language_model(stage) else stage_dir
    if config.eval:
        if main_process:
            name, stage = stages(config)[-1]
            summary = evaluate_stage(config, components, data_dir, stage, output_dir / name)
            if (output_dir / name / FINAL_DIR / CARD_NAME).is_file():
                add_evaluation(output_dir / name / FINAL_DIR, summary)
        distributed.barrier()
    logger.info("done in %.0f s", time.time() - start)
    return 0


if __name__ == "__main__":  # `deepspeed --module vitsplit_vlm.train.run` / `python -m vitsplit_vlm.train.run`
    raise SystemExit(main())
