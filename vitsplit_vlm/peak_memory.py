"""Measured peak memory of this process over a span of work (a training stage): host RSS and CUDA allocations.

Why: the planner (`vitsplit_vlm.plan`) estimates what a stage needs; a run reports what each rank really took, so a
user can set one beside the other and see whether ZeRO partitioned what it should. The host high-water mark is
reset at the start of a span where Linux allows it (writing 5 to `/proc/self/clear_refs`); elsewhere the host
figure is the process's peak since it started, which the report says.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class PeakMemory:
    host_rss: int | None  # bytes; None where the platform has no figure
    gpu_allocated: int | None  # bytes; None without CUDA
    host_since_start: bool  # the host figure covers the whole process, not only the span

    @property
    def device_peak(self) -> int | None:
        """The figure for the device the work ran on (what a bench reports): CUDA allocations where `peak_memory`
        read them, else the host's resident set."""
        return self.host_rss if self.gpu_allocated is None else self.gpu_allocated


def start_span() -> bool:
    """Reset the peaks (host where the kernel allows it, CUDA always); whether the host one was reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _host_peak() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def peak_memory(host_reset: bool, device: torch.device | None = None) -> PeakMemory:
    """The peaks since `start_span` (`host_reset`: what it returned; False: since the process started). The CUDA
    figure is `device`'s (default: the current CUDA device), none for work on a non-CUDA device."""
    cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    gpu = torch.cuda.max_memory_allocated(device) if cuda else None
    return PeakMemory(_host_peak(), gpu, host_since_start=not host_reset)


def peak_mib(device: torch.device) -> float:
    """The process's peak on `device` in MiB, since it started: what a bench reports beside its timings."""
    return peak_memory(False, device).device_peak / 2**20


def format_peaks(peaks: list[PeakMemory]) -> str:
    """One line for all ranks, in rank order: `host RSS 7.91, 7.85 GiB; GPU allocated 30.10, 30.20 GiB`."""
    def gib(values: list[int | None]) -> str:
        return ", ".join("?" if v is None else f"{v / 2**30:.2f}" for v in values) + " GiB"

    parts = [f"host RSS {gib([p.host_rss for p in peaks])}"
             + (" (peak since the process started)" if any(p.host_since_start for p in peaks) else "")]
    if any(p.gpu_allocated is not None for p in peaks):
        parts.append(f"GPU allocated {gib([p.gpu_allocated for p in peaks])}")
    return "; ".join(parts)
