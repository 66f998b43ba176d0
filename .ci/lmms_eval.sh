#!/usr/bin/env bash
# lmms-eval 0.7.3 into the CI virtual environment ($1): its own task scorers are the oracle of
# tests/test_lmms_eval_oracle.py, and tests/test_lmms_plugin.py runs its tasks through our plugin. lmms-eval's
# declared requirements pull torchvision, which must not sit beside the pinned CPU torch: lmms-eval goes in without
# dependencies, after the [lmms] extra (what its evaluation path imports). Run from the repository root.
set -euo pipefail
venv=$1
# The README's commands: the [lmms] extra (what lmms-eval's tasks and CLI import), then lmms-eval itself.
"$venv/bin/pip" install --no-cache-dir torch==2.13.0 -e ".[lmms]"
"$venv/bin/pip" install --no-cache-dir --no-deps lmms-eval==0.7.3
"$venv/bin/python" -c "
import importlib.util, torch, lmms_eval.tasks.pope.utils, lmms_eval.__main__
assert torch.__version__.startswith('2.13.0'), torch.__version__
assert importlib.util.find_spec('torchvision') is None, 'torchvision got installed beside the CPU torch'"
