"""One training stage end to end: model, data, Trainer, resume, and the stage's output.

Outputs under `<output_dir>/<stage>/`:
* LM frozen (stage 1): `non_lm_trainables.safetensors` -- only the trained projector/head weights, the hand-off to
  stage 2 (`init_from`);
* LM fully trained: `final/` -- the whole model in Hugging Face format (`from_pretrained`-loadable, with processor),
  which a following stage of the run starts from;
* LoRA: `final/` -- the peft adapter (with the fully trained projector/heads as `modules_to_save`) and `base_model/`
  -- the model it was trained on, so `scripts/merge_lora.py --model base_model --adapter final` needs nothing else;
* always: `checkpoint-*` (Trainer/DeepSpeed states for resume), `runs/` (TensorBoard), `loss_curve.png`.

Each stage logs the peak memory of every rank, and frees its model, optimizer and DeepSpeed engine before the next
stage builds its own.
"""
from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset
from transformers import TrainerCallback, set_seed
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from ..atomic import replace_dir
from ..data.collator import LlavaCollator
from ..data.llava_json import DataStats, LlavaDataset
from ..models import VitSplitLlavaForConditionalGeneration
from ..models.processing_vitsplit_llava import VitSplitLlavaProcessor
from ..peak_memory import format_peaks, peak_memory, start_span
from ..zero3 import any_partitioned, full_state_dict
from . import distributed
from .checkpoint import (
    BASE_DIR,
    FINAL_DIR,
    STAGE1_WEIGHTS,
    TRAINER_STATE,
    latest_complete_checkpoint,
    load_stage1_weights,
    non_lm_trainable_state,
    save_stage1_weights,
)
from .config import ModelConfig, StageConfig
from .logs import RunLogCallback
from .lora import apply_lora, merge_lora
from .model_setup import Components, build_stage_model, fresh_model, is_whole_model, trainable_parameter_table
from .trainer import VitSplitTrainer, training_arguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageData:
    """Where a stage's records and images are, after the synthetic default has been filled in."""

    train_files: list[Path]  # LLaVA JSON files trained on together (image paths relative to image_folder)
    image_folder: Path


class MixedDataset(ConcatDataset):
    """Several LLaVA JSON files as one training set, as LLaVA's 665K mix is several sources, without merging files."""

    def __init__(self, parts: list[LlavaDataset]):
        super().__init__(parts)
        self.parts = parts

    @property
    def stats(self) -> DataStats:
        return DataStats(
            total=sum(p.stats.total for p in self.parts), skipped=sum(p.stats.skipped for p in self.parts),
            truncated=sum(p.stats.truncated for p in self.parts), text_only=sum(p.stats.text_only for p in self.parts),
            skipped_records=[r for p in self.parts for r in p.stats.skipped_records],
        )

    @property
    def modality_lengths(self) -> list[int]:
        return [n for p in self.parts for n in p.modality_lengths]


@dataclass
class StageResult:
    name: str
    output_dir: Path
    log_history: list[dict]
    trainable_table: str = ""  # the trainable_parameter_table logged at the start of the stage (for the model card)

    @property
    def stage1_weights(self) -> Path:
        return self.output_dir / STAGE1_WEIGHTS

    @property
    def final_dir(self) -> Path:
        return self.output_dir / FINAL_DIR


def trains_language_model(stage: StageConfig) -> bool:
    return stage.lora.enabled or "language_model" in stage.train_parts


def stage_complete(stage: StageConfig, output_dir: Path) -> bool:
    """Whether the stage's final output exists (a resumed run then skips the stage)."""
    if not trains_language_model(stage):
        return (output_dir / STAGE1_WEIGHTS).is_file()
    final = output_dir / FINAL_DIR
    return (final / "adapter_config.json").is_file() or is_whole_model(final)


def load_stage_output(
    model_cfg: ModelConfig, components: Components, stage: StageConfig, stage_dir: Path
) -> VitSplitLlavaForConditionalGeneration:
    """The trained model a finished stage left on disk, whichever form its output takes (whole, for evaluation in
    one process: a training stage's ZeRO-3 config must not turn this loading into a collective zero.Init)."""
    unset_hf_deepspeed_config()
    if stage.lora.enabled:
        return merge_lora(stage_dir / BASE_DIR, stage_dir / FINAL_DIR)
    if trains_language_model(stage):
        return VitSplitLlavaForConditionalGeneration.from_pretrained(stage_dir / FINAL_DIR)
    model = fresh_model(model_cfg, components)
    load_stage1_weights(model, stage_dir)
    return model


def build_dataset(stage: StageConfig, data: StageData, processor: VitSplitLlavaProcessor, cache_dir: Path) -> MixedDataset:
    """Images go through the processor's own `preprocess_images` (one decoding rule for training, chat and
    evaluation); `<image>` expands to its token count: its crop, not the tower config's size, sets the grid."""
    return MixedDataset([
        LlavaDataset(
            path, data.image_folder, processor.tokenizer, processor.preprocess_images,
            num_image_tokens=processor.num_image_tokens,
            template=stage.data.template, model_max_length=stage.data.model_max_length,
            skip_bad_samples=stage.data.skip_bad_samples, cache_dir=cache_dir, num_proc=stage.data.num_proc,
        )
        for path in data.train_files
    ])


def run_stage(
    name: str,
    stage: StageConfig,
    model_cfg: ModelConfig,
    components: Components,
    data: StageData,
    output_dir: Path,
    seed: int,
    init_from: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> StageResult:
    """Train one stage and write its output (see module docstring); every rank calls this."""
    host_span = start_span()
    logger.info("===== %s: training %s%s =====", name, ", ".join(stage.train_parts), " + LoRA" if stage.lora.enabled else "")
    processor = VitSplitLlavaProcessor.from_components(
        components.vision_tower, components.language_model, pad_to_square=stage.data.pad_to_square
    )
    set_seed(seed)  # the new projector/heads start from the same weights in every run with this seed
    unset_hf_deepspeed_config()  # an earlier stage's config must not outlive it (a stage without DeepSpeed sets none)
    args = training_arguments(stage, output_dir, seed)  # before the model: a ZeRO-3 config makes it partitioned
    model = build_stage_model(model_cfg, components, stage, init_from)
    if stage.lora.enabled:  # the base model is what scripts/merge_lora.py merges the adapter into
        state = full_state_dict(model) if any_partitioned(model) else None  # collective under ZeRO-3
        if distributed.is_main_process():
            model.save_pretrained(output_dir / BASE_DIR, state_dict=state)
            processor.save_pretrained(output_dir / BASE_DIR)
        model = apply_lora(model, stage.lora, stage.train_parts)
    table = trainable_parameter_table(model)
    logger.info("%s trainable parameters:\n%s", name, table)
    logger.info("%s: %d process(es), %s", name, args.world_size, f"DeepSpeed {stage.deepspeed}" if stage.deepspeed else "no DeepSpeed")
    with args.main_process_first(desc=f"{name} dataset"):  # rank 0 tokenises and caches, the others reuse it
        dataset = build_dataset(stage, data, processor, output_dir.parent / "cache")
    stats = dataset.stats
    logger.info(
        "%s data %s: %d records, %d used, %d skipped (bad), %d truncated to model_max_length=%d, %d text-only",
        name, ", ".join(map(str, data.train_files)), stats.total, len(dataset), stats.skipped, stats.truncated, stage.data.model_max_length,
        stats.text_only,
    )
    trainer = VitSplitTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=LlavaCollator(processor.tokenizer),
        processing_class=processor,
        callbacks=[RunLogCallback(name), *callbacks], stage=stage,
    )
    resume = None
    if stage.resume:
        resume, incomplete = latest_complete_checkpoint(output_dir)
        for path in incomplete:
            logger.warning("%s: skipping incomplete %s (no %s: the run stopped while writing it)", name, path, TRAINER_STATE)
        logger.info("%s: %s", name, f"resuming from {resume}" if resume else "no checkpoint to resume from, starting fresh")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    _save_output(trainer, stage, output_dir)
    logger.info("%s peak memory per rank: %s", name, format_peaks(distributed.gather_to_all(peak_memory(host_span))))
    result = StageResult(name, output_dir, trainer.state.log_history, table)
    _release(trainer)
    del trainer, model
    gc.collect()  # the engine and the model hold each other through hooks: only the cycle collector frees them
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _release(trainer: VitSplitTrainer) -> None:
    """Drop every reference the Trainer's accelerator and DeepSpeed keep to the stage's model and optimizer, so the
    next stage in this process does not build its model beside this one (at the 7B width, stage 1's engine left
    3.6 GB per rank behind on the CPU). accelerate's `free_memory` destroys the DeepSpeed engine; DeepSpeed 0.19's
    ZeRO-3 also keeps the top module in a module-level list (`parameter_offload.FWD_MODULE_STACK`) for good."""
    module = trainer.model
    trainer.accelerator.free_memory()
    if trainer.is_deepspeed_enabled:
        from deepspeed.runtime.zero import parameter_offload

        parameter_offload.FWD_MODULE_STACK[:] = [m for m in parameter_offload.FWD_MODULE_STACK if m is not module]


def _save_output(trainer: VitSplitTrainer, stage: StageConfig, output_dir: Path) -> None:
    if trains_language_model(stage):
        # Saved beside final/ and renamed in: config.json is written before the weights, so a run killed while
        # saving would otherwise leave a final/ that resume takes for a finished stage (see stage_complete).
        final, tmp = output_dir / FINAL_DIR, output_dir / f".{FINAL_DIR}.tmp"
        if distributed.is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        distributed.barrier()
        trainer.save_model(str(tmp))  # HF format; gathered under ZeRO-3; adapter only for LoRA
        distributed.barrier()
        if distributed.is_main_process():
            replace_dir(tmp, final)
        logger.info("saved %s to %s", "LoRA adapter" if stage.lora.enabled else "model", final)
    else:
        state = non_lm_trainable_state(trainer.model)  # collective under ZeRO-3: every rank gathers
        if distributed.is_main_process():
            path = save_stage1_weights(state, trainer.model, output_dir / STAGE1_WEIGHTS)
            logger.info("saved %d stage-1 tensors to %s", len(state), path)
    distributed.barrier()
