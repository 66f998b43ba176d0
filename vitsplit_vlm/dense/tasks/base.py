"""The contract of a dense task and its registry."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

TASKS: dict[str, "DenseTask"] = {}


class DenseTask(ABC):
    """Everything task-specific of a dense model: subclasses are stateless and registered by `name`."""

    name: str
    formats: tuple[str, ...]  # on-disk dataset formats it reads (besides "synthetic")
    synthetic_layout: str  # the layout `write_synthetic` writes for it

    @abstractmethod
    def build_head(self, config, channels: int) -> nn.Module:
        """The decode head over the fused map (B x channels x h x w)."""

    @abstractmethod
    def outputs(self, head_map: torch.Tensor, labels: torch.Tensor | None, config) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(loss or None, output map) from the head's map at input resolution."""

    def tta_form(self, output: torch.Tensor) -> torch.Tensor:
        """What test-time augmentation averages (seg: class probabilities, as mmseg)."""
        return output

    @abstractmethod
    def metric(self, config) -> Any:
        """A fresh accumulator with update(prediction, labels) and compute()."""

    @abstractmethod
    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """The metric's input from an output map at label size."""

    @abstractmethod
    def datasets(self, root: str | Path, data, config) -> tuple[Dataset, Dataset]:
        """Train (augmented) and validation datasets of `data.format` under root."""

    def check_synthetic(self, config) -> None:
        """Refuse model settings the synthetic set cannot serve."""


def register_task(task: DenseTask) -> DenseTask:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> DenseTask:
    if name not in TASKS:
        raise ValueError(f"Unknown dense task '{name}'; choose one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]
