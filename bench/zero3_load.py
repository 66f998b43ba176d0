"""Peak host memory per rank while building the VLM from hand-downloaded components: ZeRO-3 vs whole.

Two CPU ranks (torchrun, gloo) each run `VitSplitLlavaForConditionalGeneration.from_components` on a locally saved
LM and tower, once with the ZeRO-3 config active (`HfDeepSpeedConfig`, as `TrainingArguments(deepspeed=zero3)` sets
it: every part created and loaded partitioned) and once without (each rank builds the whole model, as under ZeRO-2
before DeepSpeed wraps it). Each rank reports its peak RSS (VmHWM) and the part of it above the RSS it had after
the imports, side by side with the model's size in the load dtype. The default checkpoints are stored as the
real downloads are (Vicuna v1.5 in float16, CLIP in float32) and loaded in bfloat16, so the whole build converts,
that is copies, every weight; a checkpoint already in the load dtype is memory-mapped instead, and its untouched
pages, shared by the ranks through the page cache, barely show in RSS until training reads them.

    python bench/zero3_load.py                                   # Vicuna-7B-shaped LM cut to 2 layers (0.67B), bf16
    python bench/zero3_load.py --lm-layers 4 --tower-layers 24   # bigger: mind the host's free memory
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 1024**3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(args: argparse.Namespace) -> None:
    """One rank: build the model in `args.worker` mode, write its memory figures to `<out>/<mode>-<rank>.json`."""
    import torch
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
    from vitsplit_vlm.train.distributed import init_distributed, rank
    from vitsplit_vlm.vision import split_preset

    init_distributed(use_deepspeed=True)
    baseline = _status_kib("VmRSS")
    ds_config = None
    if args.worker == "zero3":
        ds_config = HfDeepSpeedConfig({  # noqa: F841 (transformers holds a weak reference while it lives)
            "zero_optimization": {"stage": 3}, "bf16": {"enabled": True},
            "train_micro_batch_size_per_gpu": 1, "train_batch_size": int(os.environ["WORLD_SIZE"]),
        })
    split = split_preset("clip-l-vlm")
    split.fusion_dim = args.fusion_dim
    model = VitSplitLlavaForConditionalGeneration.from_components(
        args.tower, args.lm, split, projector_type="identity", dtype=torch.bfloat16)
    torch.distributed.barrier()
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    result = {"mode": args.worker, "rank": rank(), "params": numel, "baseline_kib": baseline,
              "peak_kib": _status_kib("VmHWM"), "anon_kib": _status_kib("RssAnon"), "file_kib": _status_kib("RssFile")}
    Path(args.out, f"{args.worker}-{rank()}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(mode: str, args: argparse.Namespace, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks),
           "--master_port", str(_free_port()), __file__, "--worker", mode, "--lm", str(args.lm),
           "--tower", str(args.tower), "--out", str(out), "--fusion-dim", str(args.fusion_dim)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, timeout=args.timeout)
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(args.ranks)]


def table(rows: list[dict], ranks: int) -> str:
    size = rows[0]["params"] * 2 / GIB  # bf16
    lines = [f"model: {rows[0]['params'] / 1e9:.2f}B parameters = {size:.2f} GiB in bf16; {ranks} ranks; "
             f"goal per rank <= size/ranks + 2 GiB = {size / ranks + 2:.2f} GiB",
             "| mode | rank | peak RSS (GiB) | peak above imports (GiB) | above imports / model size | RssAnon at end (GiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        peak, above = r["peak_kib"] / 2**20, (r["peak_kib"] - r["baseline_kib"]) / 2**20
        lines.append(f"| {r['mode']} | {r['rank']} | {peak:.2f} | {above:.2f} | {above / size:.2f}x | {r['anon_kib'] / 2**20:.2f} |")
    by_mode = {m: max(r["peak_kib"] for r in rows if r["mode"] == m) for m in ("zero3", "whole")}
    lines.append(f"highest per-rank peak, zero3 / whole: {by_mode['zero3'] / by_mode['whole']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", type=Path, help="LM + tokenizer dir (default: a Vicuna-7B-shaped random one)")
    parser.add_argument("--tower", type=Path, help="vision tower dir (default: a CLIP-L/14-336-shaped random one)")
    parser.add_argument("--lm-layers", type=int, default=2, help="layers of the default LM (default: %(default)s)")
    parser.add_argument("--tower-layers", type=int, default=4, help="blocks of the default tower (default: %(default)s)")
    parser.add_argument("--fusion-dim", type=int, default=4096, help="ViT-Split fusion width (default: %(default)s)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", choices=("zero3", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        import torch

        from vitsplit_vlm.shapes import write_checkpoint

        # Stored as the real downloads are (Vicuna v1.5 in float16, CLIP in float32), loaded in bfloat16.
        if args.lm is None:
            args.lm = write_checkpoint("vicuna-7b-v1.5", Path(tmp, "lm"), args.lm_layers, dtype=torch.float16)
        if args.tower is None:
            args.tower = write_checkpoint("clip-vit-large-patch14-336", Path(tmp, "tower"), args.tower_layers,
                                          dtype=torch.float32)
        rows = [row for mode in ("zero3", "whole") for row in _launch(mode, args, Path(tmp))]
    print(table(rows, args.ranks))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
