"""Merge a LoRA stage's adapter into its base model; the code is `vitsplit_vlm.train.merge_lora`
(installed: `vitsplit-merge-lora`)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local dirs

from vitsplit_vlm.train.merge_lora import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
