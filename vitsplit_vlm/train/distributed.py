"""Process-group setup that works the same under `python`, `deepspeed` (1 or N ranks) and `torchrun`, CPU or GPU.

Why this exists (facts measured on CPU, see the environment notes):
* without a launcher, DeepSpeed falls back to MPI discovery and dies on a missing mpi4py, so a plain `python` run
  gets the single-rank rendezvous variables here;
* on CPU the HF Trainer only agrees with DeepSpeed about the world size when torch.distributed and deepspeed.comm
  are both initialised (gloo) before `TrainingArguments` is built;
* every CPU `init_distributed` JIT-builds DeepSpeed's shared-memory all-reduce op (~33 s the first time), which
  only serves inference kernels; training never needs it, so the build is skipped.
"""
from __future__ import annotations

import os
import socket
import sys
import warnings

import torch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_single_process_env() -> None:
    """Rendezvous variables for a launcher-less single-rank run; a launcher's own values are kept."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    defaults = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _skip_shm_comm_build() -> None:
    # `import deepspeed.comm.torch as m` yields the *torch* package (name clash): patch through sys.modules.
    import deepspeed.comm.torch  # noqa: F401

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def init_distributed(use_deepspeed: bool) -> None:
    """Initialise torch.distributed (and deepspeed.comm when DeepSpeed is used) once per process."""
    set_single_process_env()
    world = int(os.environ["WORLD_SIZE"])
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if world > 1:
            # N ranks share the cores: one thread each instead of N x all cores fighting (torchrun does this too).
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if use_deepspeed:
        import deepspeed

        if not torch.cuda.is_available():
            _skip_shm_comm_build()
        # ZeRO calls these torch collectives every step; torch 2.13 warns about their names each time.
        warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated", category=FutureWarning)
        deepspeed.init_distributed(dist_backend=None if torch.cuda.is_available() else "gloo")
    elif world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def gather_to_all(obj):
    """`obj` from every rank, in rank order (`[obj]` without a process group); collective."""
    if not torch.distributed.is_initialized():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
