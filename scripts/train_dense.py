"""Train a segmentation or depth head; the code is `vitsplit_vlm.dense.run` (installed: `vitsplit-train-dense`).

`python scripts/train_dense.py --help` lists the options.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local dirs

from vitsplit_vlm.dense.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
