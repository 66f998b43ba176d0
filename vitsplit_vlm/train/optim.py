"""Optimizer parameter groups with one learning rate per class of parameters, shared by the VLM and dense trainers.

Why one function: both trainers give some parameters their own LR (the VLM per model part, the dense trainer the
split task head at lr x lr_mult) and must split each LR class by weight decay the same way. Groups come in sorted
key order, so the first group, whose LR the Trainer logs as `learning_rate`, is the same in every run.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn


def grouped_param_groups(
    model: nn.Module,
    lr_class_of: Callable[[str, nn.Parameter], str | None],
    lrs: Mapping[str, float],
    decay_names: set[str],
    weight_decay: float,
) -> list[dict]:
    """One group per (LR class, decayed) with `lrs[class]` and `weight_decay` (0 for names not in `decay_names`).

    `lr_class_of(name, param)` names a parameter's LR class; None leaves the parameter out (frozen).
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        lr_class = lr_class_of(name, param)
        if lr_class is not None:
            groups.setdefault((lr_class, name in decay_names), []).append(param)
    return [
        {"params": params, "lr": lrs[lr_class], "weight_decay": weight_decay if decayed else 0.0}
        for (lr_class, decayed), params in sorted(groups.items())
    ]
