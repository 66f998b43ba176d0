"""The model card (`README.md`) written into every final model directory a training run saves.

A directory uploaded to a model hub is read through its card: the YAML metadata header (Hugging Face's model card
format, built with `huggingface_hub.ModelCardData`) says what it is (pipeline, library, base models, evaluation
results as `model-index`), the body says how it was made (components, split, stages and their data, trainable
parameters) and how to load it. Evaluation runs after the final save, so `add_evaluation` fills that part in later.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoint import BASE_DIR
from .config import RunConfig, StageConfig
from .model_setup import Components, learning_rates
from .stage import StageData

CARD_NAME = "README.md"
EVAL_HEADING = "## Evaluation"
NO_EVAL = "No evaluation ran with the training run."
PAPER = "https://arxiv.org/abs/2506.03433"


def _split_config(final_dir: Path) -> dict:
    """The split the saved model uses (a LoRA adapter's model config is in the stage's base_model/)."""
    for directory in (final_dir, final_dir.parent / BASE_DIR):
        if (directory / "config.json").is_file():
            return json.loads((directory / "config.json").read_text())["split"]
    return {}


def _stage_row(name: str, stage: StageConfig, data: StageData) -> str:
    trains = ", ".join(stage.train_parts) + (f" + LoRA (r={stage.lora.r})" if stage.lora.enabled else "")
    if stage.init_from:
        trains += f" (from `{stage.init_from}`)"
    length = f"{stage.max_steps} steps" if stage.max_steps > 0 else f"{stage.num_train_epochs:g} epochs"
    files = "<br>".join(f"`{f}`" for f in data.train_files)
    trained = set(stage.train_parts) | ({"language_model"} if stage.lora.enabled else set())
    rates = {part: lr for part, lr in learning_rates(stage).items() if part in trained}
    lrs = ", ".join(f"{part} {lr:.0e}" for part, lr in rates.items())
    return (f"| {name} | {trains} | `{stage.data.template}` | {files} | `{data.image_folder}` | {length} | "
            f"{lrs} | {Path(stage.deepspeed).stem if stage.deepspeed else 'none'} |")


def _how_to_load(final_dir: Path, lora: bool) -> str:
    if lora:
        return (
            "This directory is a peft LoRA adapter (with the fully trained projector and heads) over the model in\n"
            f"`../{BASE_DIR}/`. Merge it into one Hugging Face model, then load that:\n\n"
            "```bash\n"
            f"vitsplit-merge-lora --model {final_dir.parent / BASE_DIR} --adapter {final_dir} --out merged\n"
            "```\n\n"
            "```python\n"
            "from vitsplit_vlm.train.lora import merge_lora\n\n"
            f'model = merge_lora("{final_dir.parent / BASE_DIR}", "{final_dir}")  # in memory, no merged copy\n'
            "```\n"
        )
    return (
        "```python\n"
        "from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor\n\n"
        f'model = VitSplitLlavaForConditionalGeneration.from_pretrained("{final_dir}")\n'
        f'processor = VitSplitLlavaProcessor.from_pretrained("{final_dir}")\n'
        "```\n\n"
        f"Chat with it: `vitsplit-chat --model {final_dir} --image photo.jpg`, or on a web page: "
        f"`vitsplit-web-demo --model {final_dir}` (`pip install vitsplit_vlm[demo]`).\n"
    )


def write_model_card(
    final_dir: Path,
    config: RunConfig,
    components: Components,
    stages: Sequence[tuple[str, StageConfig, StageData]],
    trainable_table: str,
) -> Path:
    """Write `final_dir/README.md` for the last of `stages` (the stages that led to it, in order)."""
    name, last, _ = stages[-1]
    lora = last.lora.enabled
    split = _split_config(final_dir)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["vitsplit_vlm", "vit-split", "llava", "image-text-to-text", *(["lora", "peft"] if lora else [])],
        base_model=[str(components.vision_tower), str(components.language_model)],
    )
    rows = "\n".join(_stage_row(n, s, d) for n, s, d in stages)
    body = f"""
# ViT-Split LLaVA: {Path(config.output_dir).name}/{name}

A vision-language model trained with the `vitsplit_vlm` library ([ViT-Split, ICCV 2025]({PAPER})): the
vision tower stays frozen; a trainable copy of its last layers (task head) and a light module over frozen layers
(prior head) are fused into the visual tokens that a projector feeds to the language model.

## Components

| | |
|---|---|
| vision tower (frozen) | `{components.vision_tower}` |
| language model | `{components.language_model}` |
| split preset | `{config.model.split}` with options `{json.dumps(config.model.split_options)}` |
| split config | `{json.dumps(split, sort_keys=True)}` |
| projector | `{config.model.projector_type}` |

## Training stages

| stage | trains | template | data files | image folder | length | learning rates | DeepSpeed |
|---|---|---|---|---|---|---|---|
{rows}

Seed {config.seed}. Stages run in this order; each starts from the previous one's output.

## Trainable parameters ({name})

```text
{trainable_table}
```

{EVAL_HEADING}

{NO_EVAL}

## How to load

Needs the `vitsplit_vlm` package (`pip install vitsplit_vlm`); no remote code is run.

{_how_to_load(final_dir, lora)}"""
    path = final_dir / CARD_NAME
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(path)
    return path


def add_evaluation(final_dir: Path, summary: dict) -> Path:
    """Put an evaluation summary (train.evaluate's summary.json) into the card: `model-index` and its section."""
    path = final_dir / CARD_NAME
    card = ModelCard.load(path)
    source = summary.get("val_json", "held-out set")
    card.data.model_name = Path(final_dir).parent.name
    card.data.eval_results = [EvalResult(
        task_type="visual-question-answering", dataset_type="vqa", dataset_name=str(source),
        metric_type="accuracy", metric_value=round(summary["accuracy"], 2),
    )]
    lines = [f"Greedy answers on {summary['num_questions']} held-out questions of `{source}`, exact match after the "
             f"official VQA normalisation: **{summary['accuracy']:.1f}%** (always answering the majority answer of "
             f"the question's type: {summary['chance_accuracy']:.1f}%)."]
    if summary.get("per_question_type"):
        lines += ["", "| question type | questions | accuracy | majority answer | its accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {t} | {s['num_questions']} | {s['accuracy']:.1f}% | {s['majority_answer']} | {s['baseline']:.1f}% |"
                  for t, s in sorted(summary["per_question_type"].items())]
    head, _, rest = card.text.partition(EVAL_HEADING)
    tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
    card.text = f"{head}{EVAL_HEADING}\n\n" + "\n".join(lines) + "\n" + tail
    card.save(path)
    return path

