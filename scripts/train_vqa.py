"""Staged ViT-Split VLM training: `deepspeed scripts/train_vqa.py` (no arguments: the embedded CPU demo).

See `vitsplit_vlm/train/run.py` for the options; `python scripts/train_vqa.py --help` lists them.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local dirs
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vitsplit_vlm.train.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
