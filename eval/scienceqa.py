"""Entry point: `python eval/scienceqa.py --help`; the benchmark lives in vitsplit_vlm/eval/scienceqa.py."""

import sys

from vitsplit_vlm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main("scienceqa"))
