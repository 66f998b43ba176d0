"""Entry point: `python eval/gqa.py --help`; the benchmark lives in vitsplit_vlm/eval/gqa.py."""

import sys

from vitsplit_vlm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main("gqa"))
