"""Entry point: `python eval/pope.py --help`; the benchmark lives in vitsplit_vlm/eval/pope.py."""

import sys

from vitsplit_vlm.eval.cli import main

if __name__ == "__main__":
    sys.exit(main("pope"))
