"""The paper's component shapes by name: configs of the real checkpoints, written without their weights.

Why: the planner sizes a run from configs alone, and the real-shape tests and benchmarks need these exact widths,
depths, image sizes and token counts without a model hub. Each entry reproduces the `config.json` (and image
processor) of the checkpoint it names; `write_config_dir` saves a config-only directory (what
`python -m vitsplit_vlm.plan --vision_tower/--language_model` reads), `write_checkpoint` a random-weight one
(optionally cut to fewer layers) that loads through `from_pretrained` like the real download.

    python -m vitsplit_vlm.shapes --out checkpoints/shapes            # config-only dirs of every entry
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    Dinov2WithRegistersConfig,
    LlamaConfig,
    PretrainedConfig,
    SiglipVisionConfig,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from .tiny import build_tokenizer

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


@dataclass(frozen=True)
class Shape:
    """A named checkpoint shape: its config, and for a tower its image processor."""

    name: str
    kind: str  # "vision" | "language"
    config: Callable[[], PretrainedConfig]
    processor: Callable[[], object] | None = None


def _vicuna(hidden: int, mlp: int, heads: int, layers: int) -> Callable[[], LlamaConfig]:
    """lmsys/vicuna-{7b,13b}-v1.5 (Llama-2 architecture, 4096 positions, untied head)."""
    return lambda: LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=mlp, num_attention_heads=heads,
        num_key_value_heads=heads, num_hidden_layers=layers, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )


SHAPES: dict[str, Shape] = {s.name: s for s in (
    # openai/clip-vit-large-patch14-336: 24 x 1024, 336 px -> 24 x 24 = 576 patch tokens + CLS.
    Shape("clip-vit-large-patch14-336", "vision", lambda: CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        lambda: CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})),
    # google/siglip-so400m-patch14-384: 27 x 1152, 384 px -> 27 x 27 = 729 tokens, no CLS.
    Shape("siglip-so400m-patch14-384", "vision", lambda: SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
        patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        lambda: SiglipImageProcessorPil(size={"height": 384, "width": 384})),
    # facebook/dinov2-with-registers-large: 24 x 1024, 4 registers + CLS; its processor crops 224 -> 256 tokens.
    Shape("dinov2-with-registers-large", "vision", lambda: Dinov2WithRegistersConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518, patch_size=14,
        num_register_tokens=4, layerscale_value=1.0),
        lambda: BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                     do_convert_rgb=True, **IMAGENET)),
    Shape("vicuna-7b-v1.5", "language", _vicuna(4096, 11008, 32, 32)),
    Shape("vicuna-13b-v1.5", "language", _vicuna(5120, 13824, 40, 40)),
)}


def shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


def shape_config(name: str, num_layers: int | None = None) -> PretrainedConfig:
    """The named config, optionally cut to its first `num_layers` layers (same widths)."""
    config = shape(name).config()
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    return config


def _save_side_files(entry: Shape, out: Path) -> None:
    """What sits next to the weights in the real download: the image processor, or the tokenizer (a locally trained
    stand-in for Vicuna's: same special tokens, smaller vocabulary, all ids inside the LM's 32000)."""
    if entry.processor is not None:
        entry.processor().save_pretrained(out)
    else:
        build_tokenizer(out)


def write_config_dir(name: str, out: str | Path, num_layers: int | None = None) -> Path:
    """A config-only directory (no weights): enough for the planner."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape_config(name, num_layers).save_pretrained(out)
    _save_side_files(shape(name), out)
    return out


def write_checkpoint(name: str, out: str | Path, num_layers: int | None = None, dtype: torch.dtype = torch.bfloat16,
                     seed: int = 0) -> Path:
    """A random-weight checkpoint of the named shape in `dtype` (built in it: no float32 copy is ever made)."""
    entry, out = shape(name), Path(out)
    config = shape_config(name, num_layers)
    torch.manual_seed(seed)
    auto = AutoModel if entry.kind == "vision" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    del model
    _save_side_files(entry, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write one sub-directory per shape into")
    parser.add_argument("names", nargs="*", help=f"shapes to write (default: all of {', '.join(SHAPES)})")
    args = parser.parse_args(argv)
    for name in args.names or SHAPES:
        print(write_config_dir(name, args.out / name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
