#!/usr/bin/env bash
# The package as a user installs it: build the wheel from the tracked files, install it with its extras into a fresh
# virtual environment, and from an empty directory outside the source tree run every console command's --help and
# one short real run each, so a module or package-data file (configs) missing from the wheel fails here.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
start=$SECONDS
step() { echo "wheel test [$((SECONDS - start)) s]: $*"; }

# A clean copy of the tree: a stale build/ in the checkout must not put files into the wheel.
mkdir "$work/src"
git -C "$src" ls-files -z --cached --others --exclude-standard | (cd "$src" && xargs -0 cp -P --parents -t "$work/src")
python3 -m venv "$work/venv"
export PATH="$work/venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step "building the wheel"
if ! { pip wheel --no-deps --wheel-dir "$work/dist" "$work/src" &&
       pip install --no-cache-dir --no-compile torch==2.13.0 "$(ls "$work"/dist/vitsplit_vlm-*.whl)[demo]"; } >"$work/pip.log" 2>&1; then
  grep -v "^WARNING: Location" "$work/pip.log"; exit 1
fi
rm -rf "$work/src"
mkdir "$work/run" && cd "$work/run"
python -c "import vitsplit_vlm, sys; sys.exit(vitsplit_vlm.__file__.startswith('$src'))"

commands=(vitsplit-train vitsplit-train-dense vitsplit-merge-lora vitsplit-eval-vqav2 vitsplit-eval-gqa vitsplit-chat
          vitsplit-web-demo vitsplit-check-data vitsplit-synthetic-data vitsplit-tiny vitsplit-convert-llava-hf)
for command in "${commands[@]}"; do
  "$command" --help >/dev/null || { echo "$command --help failed"; exit 1; }
done
step "every --help works"

vitsplit-tiny --out tiny --size test >/dev/null
vitsplit-synthetic-data --out syn --num-train 8 --num-val 4
vitsplit-check-data syn/train.json --image-dir syn/images --tokenizer tiny/llama --max-length 256 --num-image-tokens 36
step "tiny checkpoints, synthetic data, data check"

# The embedded default (the shipped demo config, read from the package data) with fewer images and steps.
vitsplit-train --output_dir demo synthetic.num_train=64 synthetic.num_val=8 stage1.max_steps=2 stage2.max_steps=2 \
  >demo.log 2>&1 || { tail -50 demo.log; exit 1; }
grep -q "held-out accuracy" demo.log
step "vitsplit-train (embedded default)"

# An installed command under DeepSpeed's launcher (--module: python -m in each rank): a LoRA stage 2 on the demo's
# tiny checkpoints, then merged.
deepspeed --module vitsplit_vlm.train.run --output_dir lora --vision_tower demo/tiny/clip --language_model demo/tiny/llama \
  synthetic.num_train=16 synthetic.num_val=4 stage1=null eval=null stage2.require_init=false stage2.lora.enabled=true \
  "stage2.train_parts=[task_head, prior_head, projector]" stage2.max_steps=1 >lora.log 2>&1 || { tail -50 lora.log; exit 1; }
deepspeed --no_python vitsplit-train --help >/dev/null
vitsplit-merge-lora --model lora/stage2/base_model --adapter lora/stage2/final --out merged
step "deepspeed --module vitsplit_vlm.train.run (LoRA), deepspeed --no_python vitsplit-train, vitsplit-merge-lora"

vitsplit-eval-vqav2 miniset --out vqav2 >/dev/null
vitsplit-eval-vqav2 run --model-path merged --question-file vqav2/v2_OpenEnded_mscoco_val2014_questions.json \
  --image-dir vqav2/val2014 --annotation-file vqav2/v2_mscoco_val2014_annotations.json --output-dir vqav2/run --limit 4
vitsplit-eval-gqa miniset --out gqa >/dev/null
vitsplit-eval-gqa run --model-path merged --question-file gqa/testdev_balanced_questions.json --image-dir gqa/images \
  --output-dir gqa/run --limit 4
test -s vqav2/run/submission.json && test -s gqa/run/predictions.json
step "vitsplit-eval-vqav2, vitsplit-eval-gqa"

reply=$(printf 'What shape is it?\n/quit\n' | vitsplit-chat --model merged --image syn/images/val_00000.jpg --max-new-tokens 4)
grep -q "ASSISTANT>" <<<"$reply" || { echo "$reply"; exit 1; }
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
vitsplit-web-demo --model demo/stage2/final --port "$port" >web.log 2>&1 &
python - "$port" <<'PY' || { tail -30 web.log; exit 1; }
import sys, time, urllib.request
for _ in range(180):  # the page's config, once the server is up
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/config", timeout=5).read().decode()
        break
    except OSError:
        time.sleep(1)
assert "ViT-Split LLaVA chat" in page, page[:500]
PY
kill %1
step "vitsplit-chat, vitsplit-web-demo"

vitsplit-train-dense --task seg output_dir=dense train.max_steps=2 data.synthetic.num_train=8 data.synthetic.num_val=2 \
  >dense.log 2>&1 || { tail -50 dense.log; exit 1; }
step "vitsplit-train-dense"
echo "wheel test passed in $((SECONDS - start)) s"
