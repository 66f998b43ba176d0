"""Whole-tensor access to parameters that DeepSpeed ZeRO-3 partitioned at construction (`zero.Init`).

Under ZeRO-3 each rank holds only a slice of every parameter (`p.numel() == 0` on the module itself), so code that
counts, copies or saves weights must gather them first. These helpers do that one module (or one small group) at a
time, so no rank ever holds more than one gathered module besides its own slices, and are no-ops for ordinary
parameters, so the same code serves ZeRO-2 and plain runs.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_numel(param: torch.Tensor) -> int:
    """The parameter's element count before partitioning."""
    return param.ds_numel if is_partitioned(param) else param.numel()


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(param.ds_shape) if is_partitioned(param) else tuple(param.shape)


def any_partitioned(module: nn.Module) -> bool:
    return any(is_partitioned(p) for p in module.parameters())


def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = None):
    """`deepspeed.zero.GatheredParameters` over the partitioned ones among `params` (a no-op when there are none).
    With `modifier_rank=0`, what rank 0 writes into them is partitioned back to every rank on exit."""
    params = [p for p in params if is_partitioned(p)]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def copy_module_weights(dst: nn.Module, src: nn.Module) -> None:
    """`dst.load_state_dict(src.state_dict())` for modules that may be partitioned: both are gathered, rank 0
    copies, and the new values are partitioned back (collective when partitioned: every rank must call it)."""
    params = [*dst.parameters(), *src.parameters()]
    partitioned = any(is_partitioned(p) for p in params)
    with gathered(params, modifier_rank=0):
        if not partitioned or rank() == 0:
            dst.load_state_dict(src.state_dict())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as CPU tensors on rank 0 (empty elsewhere), gathered one module at a time;
    tied parameters keep every name, as `state_dict()` gives them (collective: every rank must call it)."""
    out: dict[str, torch.Tensor] = {}
    keep = rank() == 0
    for prefix, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        with gathered(own):
            if keep:
                tensors: dict[str, torch.Tensor] = {}
                module._save_to_state_dict(tensors, f"{prefix}." if prefix else "", keep_vars=False)  # own tensors only
                out.update((name, tensor.detach().to("cpu", copy=True)) for name, tensor in tensors.items())
    return out
