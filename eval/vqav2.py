"""Entry point: `python eval/vqav2.py --help`; the benchmark lives in vitsplit_vlm/eval/vqav2.py."""

import sys

from vitsplit_vlm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main("vqav2"))
