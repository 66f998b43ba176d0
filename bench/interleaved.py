"""Interleaved step timing: one long-lived process per variant, stepped in rounds (A, B, C, A, B, C, ...).

On a shared machine the load changes over minutes; timing each variant's steps back to back lets a load change
land on one variant only. Here every variant keeps its own process (so its peak memory is its own) and the parent
asks each for one step in turn, so a change of load hits all variants of a round alike; ratios can then be read per
round as well as from the medians. The protocol is one command per line on the worker's stdin (`step`, `finish`)
and one `@@`-prefixed JSON reply per line on its stdout; its stderr passes through. A step's reply holds its wall
time and its process CPU time (on a CPU shared with other jobs the latter barely changes with their load).
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time
from typing import Callable

import torch

from vitsplit_vlm.peak_memory import peak_mib

_REPLY = "@@"


def _reply(payload: dict) -> None:
    print(_REPLY + json.dumps(payload), flush=True)


def _release_freed_memory(device: torch.device) -> None:
    """Hand the step's freed activations back, so a worker waiting for its turn holds only its weights and optimizer
    state: to the OS (glibc keeps freed heap otherwise; with four workers alive that is several GiB) and, on a GPU,
    out of torch's cache (the variants of a round share the GPU; two 7B-wide stage-2 workers would not fit with
    their caches). The next step allocates its activations again, every variant alike."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def serve(step: Callable[[], dict | None], info: dict, device: torch.device) -> None:
    """Worker side: reply `info`, then time one step per `step` command (its reply: `step_s`, `cpu_s` and what the
    step returns, e.g. its loss); `finish` replies the process's peak memory on `device` (`peak_mib`)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    _reply(info)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            extra = step()
            sync()
            _reply({"step_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start, **(extra or {})})
            _release_freed_memory(device)
        elif command == "finish":
            _reply({"peak_mib": peak_mib(device)})
            return
        else:
            raise ValueError(f"Unknown worker command '{command}'; expected 'step' or 'finish'.")


class Worker:
    """Parent side of one variant's process: started with `command`, it replies its info once built."""

    def __init__(self, label: str, command: list[str]):
        self.label = label
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        code = self.process.wait()
        sys.exit(f"{self.label} failed in its process (exit {code}); its error is printed above.")

    def finish(self) -> dict:
        result = self.ask("finish")
        self.process.wait()
        return result


def interleaved_rounds(workers: dict[str, Worker], warmup: int, repeats: int) -> dict[str, list[dict]]:
    """`warmup` untimed then `repeats` timed rounds, each stepping every worker once in order; the timed steps'
    replies per worker, in round order; progress on stderr."""
    timed: dict[str, list[dict]] = {name: [] for name in workers}
    rounds, start = warmup + repeats, time.perf_counter()
    for index in range(rounds):
        kind = "warm-up" if index < warmup else "timed"
        for name, worker in workers.items():
            reply = worker.ask("step")
            if index >= warmup:
                timed[name].append(reply)
            print(f"    round {index + 1}/{rounds} ({kind}) {worker.label}: {reply['step_s']:.2f}s "
                  f"[{time.perf_counter() - start:.0f}s elapsed]", file=sys.stderr, flush=True)
    return timed
