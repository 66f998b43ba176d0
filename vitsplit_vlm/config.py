"""Dataclass run configs from YAML files, with dotted `key=value` overrides from the command line.

    cfg = load_config(RunConfig, "stage2_lora", ["stage2.learning_rate=1e-4", "stage2.lora.r=16"])
    cfg = load_config(RunConfig, "my_runs/stage2.yaml")

The configs shipped with the package (`vitsplit_vlm/configs/*.yaml`, DeepSpeed JSONs in `configs/deepspeed/`) are
package data, so an installed wheel can name them (`--config stage2_lora`, `deepspeed: zero3`) from any directory;
a path to a file of one's own works everywhere a name does.

A typo in a YAML key or an override is an error naming the key and the valid ones: a misspelt option that is
silently ignored costs a whole training run.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
_SHIPPED_KINDS = {"run": ("", ".yaml"), "deepspeed": ("deepspeed", ".json")}


def shipped_config_names(kind: str = "run") -> list[str]:
    """Names of the shipped configs of `kind` ("run": YAML run configs, "deepspeed": DeepSpeed JSONs)."""
    folder, suffix = _SHIPPED_KINDS[kind]
    return sorted(p.name[: -len(suffix)] for p in (SHIPPED_CONFIGS / folder).glob(f"*{suffix}"))


def resolve_config(value: str | Path, kind: str = "run") -> Path:
    """A config given as a file path, or as the name of a shipped one (`stage2_lora`, `zero3`); a file wins.

    Raises FileNotFoundError naming the value and the shipped names.
    """
    path = Path(value)
    if path.is_file():
        return path
    folder, suffix = _SHIPPED_KINDS[kind]
    if path.name == str(value) and not path.suffix:
        shipped = SHIPPED_CONFIGS / folder / f"{value}{suffix}"
        if shipped.is_file():
            return shipped
    label = "DeepSpeed config" if kind == "deepspeed" else "Config"
    raise FileNotFoundError(f"{label} {value} does not exist: give a {suffix} file or a shipped name "
                            f"({', '.join(shipped_config_names(kind))}).")


def config_argument(value: str) -> Path:
    """argparse `type=` of every `--config`: a bad value is a usage error (exit 2) listing the shipped names."""
    try:
        return resolve_config(value)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None, example: str) -> argparse.Namespace:
    """The CLIs' parse: the options plus dotted key=value overrides (`args.overrides`), before or after them."""
    parser.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    return parser.parse_intermixed_args(argv)


def shipped_deepspeed(value: str | None) -> str | None:
    """A `deepspeed:` option as the Trainer takes it: a shipped name becomes its file, anything else stays as given
    (so the config checks can report a missing file with the option's name)."""
    try:
        return value and str(resolve_config(value, "deepspeed"))
    except FileNotFoundError:
        return value


class ConfigError(UserError):
    """A config that cannot work (unknown key, wrong type, bad value, missing file); the message names the option
    and how to fix it. Entry points print it as one line and exit 2. `key`: the offending field, set by a
    dataclass's own checks so that loading can prefix where it sits (`configs/x.yaml.stage2.learning_rate`)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{dotted}': '{key}' is a value, not a section.")
        tree = node
    tree[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=1 c=[1,2]` -> {"a": {"b": 1}, "c": [1, 2]}; values are parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Bad override '{item}': expected key=value, e.g. train.learning_rate=2e-5.")
        _set_dotted(tree, key.strip().lstrip("-"), yaml.safe_load(raw))
    return tree


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass inside `X`, `X | None` or `Optional[X]`, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys with the list of known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    moved = getattr(cls, "MOVED_KEYS", {})  # keys an older config format used: name where they went
    for key in unknown:
        if key in moved:
            raise ConfigError(f"{where}: '{key}' is no longer read; {moved[key]}")
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}. Known keys: {', '.join(sorted(names))}.")
    kwargs = {}
    for key, value in data.items():
        nested = _dataclass_type(hints[key])
        if nested and isinstance(value, dict):
            kwargs[key] = from_dict(nested, value, f"{where}.{key}")
        elif nested and (value is not None or nested is hints[key]):  # `stage2=5`: a section replaced by a scalar
            raise ConfigError(f"{where}.{key}: is a section of options, got {value!r}; set its keys, e.g. {key}.<option>=...")
        else:
            kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a dataclass's own __post_init__ checks: say which section
        raise ConfigError(f"{where}.{err.key}: {err}" if err.key else f"{where}: {err}") from None


def _coerce(annotation: Any, value: Any, where: str) -> Any:
    """Check scalars against their annotation. YAML reads `2e-5` as a string, so floats also accept numeric text."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None and len(args) < len(typing.get_args(annotation)):
            return None
        if len(args) == 1:  # `X | None`: check against X
            return _coerce(args[0], value, where)
        return value
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got '{value}'.") from None
    if annotation in (int, bool, str) and not (type(value) is annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}.")
    container = typing.get_origin(annotation) or annotation
    if container in (list, dict) and not isinstance(value, container):
        raise ConfigError(f"{where}: expected a {'list, e.g. [a, b]' if container is list else 'mapping, e.g. {a: 1}'}, got {value!r}.")
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """`cls` from a YAML file (a path or a shipped config's name; None: the dataclass defaults) plus overrides."""
    data: dict = {}
    if path is not None:
        try:
            path = resolve_config(path)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"Config file {path} is not valid YAML: {' '.join(str(err).split())}") from err
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data, where=str(path) if path else "config")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
