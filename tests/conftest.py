import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Test-size tiny checkpoints (towers, Llama + tokenizer), written once per test session."""
    from vitsplit_vlm.tiny import build_tiny_checkpoints

    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), size="test")
