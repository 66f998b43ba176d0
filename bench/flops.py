"""FLOPs of one step, the benches' cost measure that no CPU contention can skew.

Counted with torch's `FlopCounterMode`: matmuls, convolutions and attention; elementwise work and the optimizer are
not counted. Attention runs on the math backend while counting, which decomposes it into counted matmuls on every
device (the CPU flash kernel has no FLOP formula). A step built on the meta device counts the same (tested) from
shapes alone: no weights, no memory, no time, so any size counts on any machine.
"""
from __future__ import annotations

from typing import Callable

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of `step` (forward, loss and backward, as the step does them)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()
