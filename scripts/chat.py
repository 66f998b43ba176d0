"""Chat in the terminal with a checkpoint; the code is `vitsplit_vlm.chat_repl` (installed: `vitsplit-chat`)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local dirs

from vitsplit_vlm.chat_repl import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
