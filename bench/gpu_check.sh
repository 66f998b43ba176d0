#!/usr/bin/env bash
# The GPU check: one script to run whenever a GPU is at hand, sized to finish within 8 minutes on one H200.
# In bf16 with SDPA attention and gradient checkpointing it prints
#   1. bench/vlm_step.py at the real shapes: CLIP ViT-L/14-336 (all 24 blocks) + a Vicuna-7B-shaped LM with all 32
#      layers, 2048 tokens holding 576 image tokens: stage-1 and stage-2 steps of the LLaVA-1.5 baseline and of
#      ViT-Split, samples/s, tokens/s, peak memory, and the ratios;
#   2. bench/vision_step.py (ViT-Split against full fine-tuning, an adapter-like branch and LoRA);
#   3. bench/eval_throughput.py (one-at-a-time vs batched vs prefix-shared evaluation, chat time to first token),
# then writes everything to $OUT (default gpu_check/): each bench's output and JSON, and summary.txt.
# Any failing or overrunning bench makes it exit non-zero.
#
#   bash bench/gpu_check.sh                  # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --smoke          # the same sequence on the CPU with tiny shapes (a check of the script)
#
# Environment: PYTHON (default: python), OUT (default: gpu_check), BATCH (vlm_step micro-batch, default 4),
# LAYERS (LM layers, default 32).
set -euo pipefail

SMOKE=0
case "${1:-}" in
  "") ;;
  --smoke) SMOKE=1 ;;
  *) echo "usage: bash bench/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu_check}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
START=$(date +%s)

run() {  # run NAME SECONDS CMD...: a bench under a time limit, its output kept; stops the check on failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  local t0=$(date +%s) rc=0
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err" || rc=$?
  cat "$OUT/$name.out" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$OUT/$name.err" >&2
    echo "FAILED: $name exited $rc$([ "$rc" -eq 124 ] && echo " (over its ${limit}s limit)")" | tee -a "$SUMMARY" >&2
    exit 1
  fi
  echo "-- $name: $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY"
}

: > "$SUMMARY"
"$PYTHON" - "$SMOKE" <<'EOF' | tee -a "$SUMMARY"
import platform, sys
import torch, transformers
smoke = sys.argv[1] == "1"
print(f"gpu_check{' --smoke (CPU, tiny shapes: checks, not figures)' if smoke else ''}")
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not smoke:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or use --smoke")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
EOF

if [ "$SMOKE" -eq 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  run vlm_step 600 "$PYTHON" "$HERE/vlm_step.py" --smoke --gradient-checkpointing --json "$OUT/vlm_step.json"
  run vision_step 600 "$PYTHON" "$HERE/vision_step.py" --smoke --json "$OUT/vision_step.json"
  run eval_throughput 600 "$PYTHON" "$HERE/eval_throughput.py" --smoke --json "$OUT/eval_throughput.json"
else
  run vlm_step 300 "$PYTHON" "$HERE/vlm_step.py" --device cuda --dtype bf16 --attn sdpa --gradient-checkpointing \
    --layers "${LAYERS:-32}" --tower-layers 24 --seq-len 2048 --batch-size "${BATCH:-4}" --warmup 1 --rounds 4 \
    --json "$OUT/vlm_step.json"
  run vision_step 90 "$PYTHON" "$HERE/vision_step.py" --device cuda --dtype bf16 --batch-size 32 --warmup 3 \
    --steps 10 --json "$OUT/vision_step.json"
  run eval_throughput 75 "$PYTHON" "$HERE/eval_throughput.py" --device cuda --dtype bfloat16 --images 30 \
    --batch-size 32 --repeats 1 --json "$OUT/eval_throughput.json"
fi
echo "gpu_check passed in $(( $(date +%s) - START ))s; summary: $SUMMARY" | tee -a "$SUMMARY"
