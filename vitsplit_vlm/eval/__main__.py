"""``python -m vitsplit_vlm.eval <benchmark> run|merge|score|miniset ...``: the same CLI as ``eval/<benchmark>.py``."""

import sys

from . import BENCHMARKS
from .cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        asked = sys.argv[1:2] in (["-h"], ["--help"])  # help goes to stdout with success, as argparse does
        print(f"usage: python -m vitsplit_vlm.eval {{{','.join(BENCHMARKS)}}} {{run,merge,score,miniset}} ...",
              file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
