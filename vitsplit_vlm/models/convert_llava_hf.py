"""Convert a llava-hf checkpoint (e.g. llava-hf/llava-1.5-7b-hf downloaded by hand) into this library's format.

    python scripts/convert_llava_hf.py --src llava-1.5-7b-hf --dst llava-1.5-7b-vitsplit [--split-preset clip-l-vlm]

The tower comes from `vision_tower`, the LM from `language_model` + `lm_head`, the projector from
`multi_modal_projector`, `image_token_id` and the feature layer from the config; the tokenizer and image processor
are saved as a `VitSplitLlavaProcessor` next to the model. With `llava-baseline` the result computes exactly what
the source does; with a split preset the task head starts as a copy of the tower's blocks it replaces and the prior
head and fusion start fresh (so the LLaVA projector sees new features until stage-1 training).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from ..config import ConfigError
from ..errors import run_cli
from ..vision import SPLIT_PRESETS, ViTSplitConfig, split_preset
from ..vision.towers import floors_patch_grid, tower_parts
from .configuration_vitsplit_llava import VitSplitLlavaConfig
from .modeling_vitsplit_llava import VitSplitLlavaForConditionalGeneration
from .processing_vitsplit_llava import VitSplitLlavaProcessor

# vision_feature_select_strategy -> leading tokens it drops; ViT-Split drops exactly the tower's prefix tokens.
_DROPPED_BY_STRATEGY = {"default": 1, "full": 0}


def _check_source_config(src: Path) -> LlavaConfig:
    """The source's config alone (no weights): anything but a llava-hf checkpoint is refused before a byte of
    weights is read. `LlavaForConditionalGeneration.from_pretrained` on a plain LM directory would otherwise build a
    default-size (7B) LLaVA first and exhaust the memory."""
    if not (src / "config.json").is_file():
        raise ConfigError(f"--src {src}: no config.json; pass the directory of a llava-hf checkpoint")
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    if config.model_type != "llava":
        raise ConfigError(
            f"--src {src}: a '{config.model_type}' checkpoint, not a llava-hf one (model_type 'llava', e.g. "
            "llava-hf/llava-1.5-7b-hf); to build a new model from a tower and an LM use "
            "VitSplitLlavaForConditionalGeneration.from_components"
        )
    if not isinstance(config.vision_feature_layer, int):
        raise ConfigError(
            f"{src}: vision_feature_layer={config.vision_feature_layer} concatenates several layers; ViT-Split reads one."
        )
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise ConfigError(
            f"{src}: the projector (act '{config.projector_hidden_act}', bias {config.multimodal_projector_bias}) is "
            "not LLaVA-1.5's mlp2x_gelu (GELU, with biases)."
        )
    return config


def _check_source_tower(src: Path, llava: LlavaForConditionalGeneration) -> None:
    config = llava.config
    prefix = tower_parts(llava.model.vision_tower).num_prefix_tokens
    if _DROPPED_BY_STRATEGY.get(config.vision_feature_select_strategy) != prefix:
        raise ConfigError(
            f"{src}: vision_feature_select_strategy='{config.vision_feature_select_strategy}' does not drop exactly "
            f"the tower's {prefix} prefix token(s), which is what ViT-Split feeds the projector."
        )


def convert_llava_hf(
    src: str | Path, dst: str | Path, split: str | ViTSplitConfig = "clip-l-vlm", dtype: torch.dtype | None = None,
    seed: int = 0,
) -> VitSplitLlavaForConditionalGeneration:
    """Write the converted model + processor to `dst` and return the model.

    `split.feature_layer` is replaced by the source's `vision_feature_layer` (the layer its projector was trained
    on). `dtype=None` keeps the checkpoint's dtype. `seed` draws the fresh prior head and fusion, so the same
    source, split and seed always give the same checkpoint.
    """
    src, dst = Path(src), Path(dst)
    split = split_preset(split) if isinstance(split, str) else ViTSplitConfig(**split.to_dict())
    _check_source_config(src)
    llava = LlavaForConditionalGeneration.from_pretrained(src, dtype=dtype or "auto")
    _check_source_tower(src, llava)
    source = llava.config
    split.feature_layer = source.vision_feature_layer
    processor = VitSplitLlavaProcessor(
        AutoImageProcessor.from_pretrained(src), AutoTokenizer.from_pretrained(src),
        patch_size=source.vision_config.patch_size, floor_grid=floors_patch_grid(source.vision_config),
    )
    if processor.image_token_id != source.image_token_id:
        raise ConfigError(
            f"{src}: the tokenizer's <image> id {processor.image_token_id} differs from the config's "
            f"image_token_id {source.image_token_id}."
        )
    config = VitSplitLlavaConfig(
        vision_config=source.vision_config.to_dict(), text_config=source.text_config.to_dict(), split=split,
        projector_type="mlp2x_gelu", image_token_id=source.image_token_id,
    )
    torch.manual_seed(seed)
    model = VitSplitLlavaForConditionalGeneration._from_config(config, dtype=llava.dtype)
    model.vision.tower.load_state_dict(llava.model.vision_tower.state_dict())
    model.vision.init_task_head_from_tower()
    model.language_model.base_model.load_state_dict(llava.model.language_model.state_dict())
    model.language_model.get_output_embeddings().load_state_dict(llava.lm_head.state_dict())
    hf_projector = llava.model.multi_modal_projector
    model.projector[0].load_state_dict(hf_projector.linear_1.state_dict())
    model.projector[2].load_state_dict(hf_projector.linear_2.state_dict())
    model.generation_config = llava.generation_config
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return model


def main(argv: list[str] | None = None) -> int:
    """The CLI: a source that is not a convertible llava-hf checkpoint prints one line and exits 2."""
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="llava-hf checkpoint directory")
    parser.add_argument("--dst", required=True, type=Path, help="output directory")
    parser.add_argument("--split-preset", default="clip-l-vlm", choices=sorted(SPLIT_PRESETS))
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: the source's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh prior head and fusion (default: 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = convert_llava_hf(args.src, args.dst, args.split_preset, dtype, seed=args.seed)
    for row in model.trainable_parameter_table():
        print(f"{row.part:>15}: {row.total:,} params")
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    raise SystemExit(main())
