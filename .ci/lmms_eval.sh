#!/usr/bin/env bash
# lmms-eval 0.7.3 into the CI virtual environment ($1), so its own task scorers are the oracle of
# tests/test_lmms_eval_oracle.py. lmms-eval's declared requirements pull torchvision, which must not sit beside the
# pinned CPU torch: lmms-eval goes in without dependencies, then only what importing its task modules needs.
set -euo pipefail
venv=$1
"$venv/bin/pip" install --no-cache-dir --no-deps lmms-eval==0.7.3
"$venv/bin/pip" install --no-cache-dir torch==2.13.0 loguru pytz requests tenacity evaluate sacrebleu
"$venv/bin/python" -c "import torch, lmms_eval.tasks.pope.utils; assert torch.__version__.startswith('2.13.0')"
