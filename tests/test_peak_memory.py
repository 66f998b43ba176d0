"""vitsplit_vlm.peak_memory: the host peak covers what a span allocated, and the CUDA figure is the given device's."""
import sys
from pathlib import Path

import pytest
import torch

from vitsplit_vlm import peak_memory as pm

MIB = 2**20


def _rss() -> int:
    """The resident set now, from the kernel (an independent reading of the same quantity)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_host_peak_covers_an_allocation_freed_before_the_reading():
    host_reset = pm.start_span()
    before = _rss()
    block = torch.ones(128 * MIB // 4)  # 128 MiB, every page written
    del block
    peak = pm.peak_memory(host_reset, torch.device("cpu"))
    assert peak.gpu_allocated is None and peak.host_since_start is (not host_reset)
    assert peak.device_peak == peak.host_rss >= before + 120 * MIB


def test_cuda_figure_is_the_given_devices_and_absent_for_cpu_work(monkeypatch):
    asked = []

    def max_memory_allocated(device=None):
        asked.append(device)
        return {None: 5, "cuda:1": 7}[None if device is None else str(device)]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", max_memory_allocated)
    on_second = pm.peak_memory(False, torch.device("cuda:1"))
    assert (on_second.gpu_allocated, on_second.device_peak) == (7, 7)
    assert pm.peak_memory(True).gpu_allocated == 5  # the training stages' call: the current device
    on_cpu = pm.peak_memory(False, torch.device("cpu"))
    assert on_cpu.gpu_allocated is None and on_cpu.device_peak == on_cpu.host_rss > 0
    assert asked == [torch.device("cuda:1"), None]
    assert pm.peak_mib(torch.device("cuda:1")) == 7 / MIB  # the benches' figure: the device's peak in MiB
