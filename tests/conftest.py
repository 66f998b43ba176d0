import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(sys.executable).parent / "deepspeed"  # the launcher of this interpreter's environment


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_shape: paper-sized model shapes (CLIP-L/336, SigLIP so400m, DINOv2-L, a 7B-wide LM); "
        "minutes, not seconds; CI runs them (deselect with -m 'not real_shape')",
    )


@pytest.fixture(scope="module")
def gloo_rank():
    """One in-process gloo rank (torch.distributed + deepspeed.comm) for a module's DeepSpeed engines / zero.Init;
    torn down so later tests see a plain process. Use with `pytestmark = pytest.mark.usefixtures("gloo_rank")`."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from vitsplit_vlm.train.distributed import init_distributed

    saved = {key: os.environ.get(key) for key in _DIST_ENV}
    init_distributed(use_deepspeed=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    unset_hf_deepspeed_config()
    if dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Test-size tiny checkpoints (towers, Llama + tokenizer), written once per test session."""
    from vitsplit_vlm.tiny import build_tiny_checkpoints

    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), size="test")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_ckpts):
    """The tiny Llama's tokenizer (`<image>` and a pad token included). Shared: deep-copy it before changing it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_ckpts["llama"])


@pytest.fixture(scope="session")
def tiny_processor(tiny_ckpts):
    """`VitSplitLlavaProcessor.from_components` of the tiny CLIP tower and Llama (left padding, no pad to square).
    Shared: build another one to change its settings."""
    from vitsplit_vlm.models import VitSplitLlavaProcessor

    return VitSplitLlavaProcessor.from_components(tiny_ckpts["clip"], tiny_ckpts["llama"])


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_ckpts, tmp_path_factory) -> Path:
    """A saved random tiny VitSplitLlava (CLIP tower, the paper's VLM split) with its processor, as training
    writes it. Tests must not write into it (copy it first)."""
    import torch

    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration, VitSplitLlavaProcessor
    from vitsplit_vlm.vision import split_preset

    torch.manual_seed(0)
    model = VitSplitLlavaForConditionalGeneration.from_components(
        tiny_ckpts["clip"], tiny_ckpts["llama"], split_preset("clip-l-vlm"))
    with torch.no_grad():  # random init: make the visual tokens loud enough that answers depend on the image
        for p in model.projector.parameters():
            p.mul_(10)
    out = tmp_path_factory.mktemp("tiny_vlm")
    model.save_pretrained(out)
    VitSplitLlavaProcessor.from_components(tiny_ckpts["clip"], tiny_ckpts["llama"]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_vlm_dir(tiny_vlm_dir, tmp_path_factory) -> Path:
    """`tiny_vlm_dir` with the special tokens suppressed in its generation_config, so that every reply has visible
    text (a random model may emit eos first) for the chat tests that assert a real reply."""
    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("tiny_chat_vlm") / "vlm"
    shutil.copytree(tiny_vlm_dir, out)
    config = GenerationConfig.from_pretrained(out)
    config.suppress_tokens = sorted(set(AutoTokenizer.from_pretrained(out).all_special_ids))
    config.save_pretrained(out)
    return out


@pytest.fixture
def free_port() -> int:
    """A loopback port nobody listens on now, so a launcher or server started by a test does not collide with
    another job's (DeepSpeed's launcher defaults to 29500)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_command(cmd: list[str], threads: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """`cmd` from the repository root as a user types it, in a clean launch environment (no rendezvous variables
    from this process, a thread count that fits the ranks); fails the test with the output's tail unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="session")
def run_command():
    return _run_command


@pytest.fixture
def deepspeed_launcher() -> Path:
    """The `deepspeed` launcher next to this Python (skips where it is not installed)."""
    if not LAUNCHER.exists():
        pytest.skip("the deepspeed launcher is not installed next to this Python")
    return LAUNCHER
