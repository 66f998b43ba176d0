"""Checks of the local checkpoint directories a run names, before anything loads from them.

Everything in this project loads with `from_pretrained(local_dir)`. Handed a path that does not exist,
`from_pretrained` treats it as a hub repo id (a confusing network error, or a minute of retries offline); handed a
language model where a tower belongs, or the reverse, it fails deep inside with an unrelated hint ("install
sentencepiece"). Reading `config.json` (no weights) answers both in milliseconds, naming the option.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError
from .vision.towers import SUPPORTED_FAMILIES

_COMPOSITE_VISION = ("clip", "siglip")  # full text+vision checkpoints that load as their vision tower
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def _model_type(path: str | Path, option: str) -> str:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{option}: no such directory {path}; pass a checkpoint directory on this machine "
                          "(downloaded by hand, e.g. with `huggingface-cli download`).")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"{option}: {path} has no config.json; pass a Hugging Face checkpoint directory "
                          "(as written by save_pretrained).")
    try:
        return str(json.loads(config.read_text()).get("model_type", ""))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ConfigError(f"{option}: {config} is not a JSON object ({err}).") from None


def _is_vision(model_type: str) -> bool:
    return model_type in SUPPORTED_FAMILIES or model_type in _COMPOSITE_VISION


def check_vision_tower_dir(path: str | Path, option: str = "vision_tower") -> None:
    """A supported tower (DINOv2, CLIP, SigLIP) in a local directory."""
    model_type = _model_type(path, option)
    if not _is_vision(model_type):
        raise ConfigError(
            f"{option}: {path} holds a '{model_type}' model, not a vision tower (supported: "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))}). Did you swap the vision tower and the language model?"
        )


def check_language_model_dir(path: str | Path, option: str = "language_model") -> None:
    """A causal LM with its tokenizer in a local directory (not a vision tower)."""
    model_type = _model_type(path, option)
    if _is_vision(model_type):
        raise ConfigError(
            f"{option}: {path} holds a '{model_type}' vision tower, not a language model. Did you swap the vision "
            "tower and the language model?"
        )
    if not any((Path(path) / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(f"{option}: {path} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); the LM directory "
                          "must hold its tokenizer too, as a downloaded checkpoint does.")
