"""The benches on tiny shapes: every variant builds and steps, trains what it claims to train, and the VLM bench runs
as a user types it."""
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch


_PATH = Path(__file__).resolve().parents[1] / "bench" / "vision_step.py"
_spec = importlib.util.spec_from_file_location("bench_vision_step", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(bench)

CPU = torch.device("cpu")


def _tiny() -> "bench.BenchConfig":
    return bench.smoke_config()


def test_measure_reports_one_timed_step():
    result = bench.measure("vit-split", _tiny(), CPU, bf16=False, warmup=0, steps=1)
    assert result["variant"] == "vit-split"
    assert len(result["times_s"]) == 1 and result["step_s"] > 0
    assert result["gflop"] > 0 and result["peak_mib"] > 0


def test_trainable_parameter_counts_are_ordered():
    counts = {name: bench.trainable_params(bench.build_variant(name, _tiny())) for name in bench.VARIANTS}
    assert counts["frozen"] == 0
    assert 0 < counts["vit-split"] < counts["full"] < counts["full+adapter"]
    assert 0 < counts["lora"] < counts["full"]


@pytest.mark.parametrize("name", bench.VARIANTS)
def test_step_updates_only_the_trainable_parameters(name):
    torch.manual_seed(0)
    model = bench.build_variant(name, _tiny())
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    bench.make_step(name, model, _tiny(), CPU)()
    params = dict(model.named_parameters())
    changed = {k for k, p in params.items() if not torch.equal(before[k], p)}
    trainable = {k for k, p in params.items() if p.requires_grad}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    if name != "frozen":
        assert "head.weight" in changed
        assert any(k.startswith("backbone.") for k in changed), "the step did not train the variant's backbone"


# bench/vlm_step.py: the LLaVA-1.5 baseline against ViT-Split at the same LM, per stage of the shipped configs.
_VLM_PATH = _PATH.parent / "vlm_step.py"
_vlm_spec = importlib.util.spec_from_file_location("bench_vlm_step", _VLM_PATH)
vlm_bench = importlib.util.module_from_spec(_vlm_spec)
sys.modules[_vlm_spec.name] = vlm_bench
_vlm_spec.loader.exec_module(vlm_bench)


def test_vlm_step_smoke_runs_as_typed_and_reports_both_stages(tmp_path):
    out = tmp_path / "vlm.json"
    done = subprocess.run([sys.executable, str(_VLM_PATH), "--smoke", "--json", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    # What trains is the shipped configs' train_parts; the baseline keeps those that exist without the split.
    parts = {s: {v: row["train_parts"] for v, row in stages[s]["variants"].items()} for s in stages}
    assert parts == {"stage1": {"baseline": ["projector"], "vit-split": ["projector", "prior_head"]},
                     "stage2": {"baseline": ["projector", "language_model"],
                                "vit-split": ["task_head", "prior_head", "projector", "language_model"]}}
    # Tiny tower 32 wide, LM 64 wide: the baseline's mlp2x_gelu projector (32->64->64) vs ViT-Split's prior head
    # (1x1 + 3x3 conv at 32) and fusion (1x1 + 3x3 conv 64 -> 64) with the identity projector.
    assert stages["stage1"]["variants"]["baseline"]["trainable_params"] == 32 * 64 + 64 + 64 * 64 + 64
    conv_block = lambda cin, cout: cin * cout + cout + 9 * cout * cout + cout
    assert stages["stage1"]["variants"]["vit-split"]["trainable_params"] == conv_block(32, 32) + conv_block(64, 64)
    for stage in ("stage1", "stage2"):
        assert f"{stage}: ViT-Split / baseline step time {stages[stage]['time_ratio']:.3f}x" in done.stdout
    assert "goal: ViT-Split's stage-2 step <= 1.05x the baseline's at the 7B width" in done.stdout
    assert "absolute times are NOT meaningful" in done.stdout and "step s" not in done.stdout  # no CPU times
    # One live process per (stage, variant), the two of a stage stepped in turn (bench/interleaved.py).
    order = [f"{stage} {variant}" for stage in ("stage1", "stage2") for variant in ("baseline", "vit-split")]
    assert re.findall(r"round 1/1 \(timed\) (stage\d \S+):", done.stderr) == order
    results = json.loads(out.read_text())["results"]
    assert [f"{r['stage']} {r['variant']}" for r in results] == order
    for r in results:  # each worker's memory is its own: measured before it built its model and at the end
        assert len(r["times_s"]) == len(r["cpu_times_s"]) == len(r["losses"]) == 1
        assert r["peak_mib"] >= r["base_mib"] > 0


def test_vlm_step_time_ratio_is_the_median_per_round_ratio_of_process_cpu_time_on_a_cpu():
    def row(variant, wall, cpu, peak):
        return {"stage": "stage2", "variant": variant, "train_parts": [], "trainable_params": 1, "total_params": 1,
                "step_s": statistics.median(wall), "times_s": wall, "cpu_times_s": cpu, "peak_mib": peak}

    args = vlm_bench.parse_args(["--stages", "stage2"])
    results = [row("baseline", [1.0, 1.0, 1.0], [2.0, 4.0, 5.0], 100.0), row("vit-split", [9.0] * 3, [3.0, 4.0, 10.0], 150.0)]
    stage = vlm_bench.summarize(results, {"stage2": {"baseline": 10, "vit-split": 11}}, args)["stage2"]
    assert stage["time_ratios"] == [1.5, 1.0, 2.0] and stage["time_ratio"] == 1.5  # wall time would give 9x
    assert stage["memory_ratio"] == 1.5 and stage["flop_ratio"] == pytest.approx(1.1)


@pytest.mark.parametrize("variant, stage", [("baseline", "stage2"), ("vit-split", "stage1"), ("vit-split", "stage2")])
def test_vlm_step_trains_exactly_the_stage_parts(tmp_path, variant, stage):
    tower, lm = vlm_bench.write_components(tmp_path, 2, 4, smoke=True)
    model, parts = vlm_bench.build(variant, stage, tower, lm, CPU, torch.float32, "sdpa", checkpointing=True)
    batch = vlm_bench.make_batch(model, 2, 24, CPU)
    assert (batch["input_ids"] == model.config.image_token_id).sum(1).tolist() == [16, 16]
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model(**batch).loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k, p in model.named_parameters() if not torch.equal(before[k], p)}
    expected = {"vision.prior_head", "vision.fusion"} if variant == "vit-split" else {"projector.0", "projector.2"}
    if stage == "stage2":
        expected |= {"language_model.model", "language_model.lm_head"} | (
            {"vision.task_blocks"} if variant == "vit-split" else set())
    assert changed == expected
    assert not any(p.requires_grad for p in model.vision.tower.parameters())


# bench/gpu_check.sh: the GPU check's sequence, on the CPU with tiny shapes.
_GPU_CHECK = _PATH.parent / "gpu_check.sh"


def test_gpu_check_smoke_runs_every_bench_and_writes_a_summary(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(_GPU_CHECK), "--smoke"], capture_output=True, text=True, env=env, timeout=1900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("gpu_check --smoke (CPU, tiny shapes: checks, not figures)\npython ")
    assert f"torch {torch.__version__}, transformers " in summary
    for name in ("vlm_step", "vision_step", "eval_throughput"):
        assert f"== {name} (limit " in summary and f"-- {name}: " in summary
        assert json.loads((out / f"{name}.json").read_text())
    assert "stage2: ViT-Split / baseline step time" in summary and "gradient checkpointing on" in summary
    assert "ViT-Split step is" in summary and "answers identical" in summary
    assert summary.rstrip().splitlines()[-1].startswith("gpu_check passed in ")


def test_gpu_check_stops_with_an_error_when_a_bench_fails(tmp_path):
    python = tmp_path / "python"  # fails for the first bench, runs the header as the real interpreter
    python.write_text(f'#!/bin/sh\ncase "$*" in *vlm_step.py*) echo boom >&2; exit 3;; esac\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "check"), "PYTHON": str(python)}
    done = subprocess.run(["bash", str(_GPU_CHECK), "--smoke"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 1
    assert done.stderr.rstrip().splitlines()[-2:] == ["boom", "FAILED: vlm_step exited 3"]
    bad = subprocess.run(["bash", str(_GPU_CHECK), "--fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr == "usage: bash bench/gpu_check.sh [--smoke]\n"
