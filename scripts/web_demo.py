"""Gradio page to chat about an image; the code is `vitsplit_vlm.web_demo` (installed: `vitsplit-web-demo`)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local dirs

from vitsplit_vlm.web_demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
