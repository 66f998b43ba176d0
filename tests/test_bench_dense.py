"""bench/dense_step.py: the ViT-Adapter re-implementation against independent checks, the paper's parameter counts,
every variant stepping (tiny shapes), and the script's --smoke run as a user types it."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_dense_step", REPO / "bench" / "dense_step.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)
interleaved = sys.modules["interleaved"]  # imported by the bench from its own folder

TINY = bench.DenseBenchConfig(size="tiny", image_size=64, batch_size=2, num_classes=5)


def test_deformable_attention_core_samples_bilinearly_with_zeros_outside():
    value_map = torch.arange(12.0).view(1, 1, 3, 4)  # one head, one channel, 3 x 4 level
    value = value_map.flatten(2).transpose(1, 2)[:, :, None]  # B x S x heads x d
    # Two points at pixel centres (1, 2) and (0, 3), one between (0, 0) and (0, 1), one outside the level.
    xy = torch.tensor([[(2.5, 1.5), (3.5, 0.5), (1.0, 0.5), (-3.0, 0.5)]]) / torch.tensor([4.0, 3.0])
    locations = xy.view(1, 1, 1, 1, 4, 2)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1]).view(1, 1, 1, 1, 4)
    out = bench.ms_deform_attn_core(value, [(3, 4)], locations, weights)
    assert out.shape == (1, 1, 1)
    assert float(out) == pytest.approx(0.4 * 6 + 0.3 * 3 + 0.2 * 0.5 + 0.1 * 0)


def test_deformable_attention_with_zero_offsets_reads_the_reference_point():
    """Zero sampling offsets and one level the same size as the queries: each query reads its own position."""
    torch.manual_seed(0)
    attn = bench.MSDeformAttn(8, levels=1, heads=2, points=4)
    torch.nn.init.zeros_(attn.sampling_offsets.weight)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    feat = torch.randn(2, 12, 8)
    out = attn(torch.randn(2, 12, 8), bench.reference_points([(3, 4)], 1, "cpu"), feat, [(3, 4)])
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(feat)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size, variant, paper_m", [
    ("s", "vit-split", 10.2), ("b", "vit-split", 40.5),  # ViT-Split README (deformable prior/fusion convs)
    ("s", "vit-adapter", 57.6), ("b", "vit-adapter", 133.9),  # ViT-Adapter paper, UperNet on ADE20K
])
def test_trainable_parameters_match_the_papers(size, variant, paper_m):
    """Counts include the position embeddings resized to 512 px (+0.3M ViT-S, +0.7M ViT-B over 224 px)."""
    count = bench.counted(variant, bench.DenseBenchConfig(size=size))["trainable_params"] / 1e6  # built on meta
    assert count == pytest.approx(paper_m, rel=0.01)


@pytest.mark.parametrize("name", bench.VARIANTS)
def test_each_variant_steps_and_trains_only_its_trainable_set(name):
    torch.manual_seed(0)
    model = bench.build_variant(name, TINY)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    bench.make_step(model, TINY, torch.device("cpu"))()
    changed = {k for k, p in model.named_parameters() if not torch.equal(before[k], p)}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    tower_blocks = {k for k in before if "encoder.layer." in k}  # the ViT's own blocks (not ViT-Split's copies)
    if name.startswith("vit-split"):
        assert not tower_blocks & trainable
    else:
        assert tower_blocks & changed


def test_smoke_run_steps_the_timed_variants_in_interleaved_rounds(tmp_path):
    """As a user types it: one warm-up and two timed rounds, each stepping every timed variant once in the same
    order; an --untimed variant is counted, not stepped."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "bench/dense_step.py", "--smoke", "--warmup", "1", "--repeats", "2", "--threads", "1",
               "--untimed", "vit-adapter", "--json", str(tmp_path / "smoke.json")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    timed = [name for name in bench.VARIANTS if name != "vit-adapter"]
    steps = re.findall(r"round (\d)/3 \((warm-up|timed)\) ViT-TINY (\S+):", result.stderr)
    assert steps == [(str(r), "warm-up" if r == 1 else "timed", name) for r in (1, 2, 3) for name in timed]
    summary = json.loads((tmp_path / "smoke.json").read_text())
    assert summary["threads"] == 1 and summary["repeats"] == 2 and summary["untimed"] == ["vit-adapter"]
    rows = {r["variant"]: r for r in summary["results"]}
    assert list(rows) == list(bench.VARIANTS) and all(r["gflop"] > 0 and r["trainable_params"] > 0 for r in rows.values())
    for name in timed:
        assert len(rows[name]["times_s"]) == 2 and rows[name]["step_s"] == pytest.approx(sum(rows[name]["times_s"]) / 2)
        assert rows[name]["peak_mib"] > 0
    assert "step_s" not in rows["vit-adapter"]
    assert "ViT-TINY: ViT-Adapter + UperNet / ViT-Split: step time not measured, FLOPs" in result.stdout
    assert "ViT-TINY: the deformable 3x3 convs cost" in result.stdout


@pytest.mark.parametrize("name", bench.VARIANTS)
def test_flops_counted_on_the_meta_device_equal_the_count_on_the_cpu(name):
    torch.manual_seed(0)
    model = bench.build_variant(name, TINY)
    on_cpu = bench.count_flops(bench.make_step(model, TINY, torch.device("cpu")))
    assert bench.counted(name, TINY) == {"variant": name, "size": "tiny", "gflop": on_cpu / 1e9,
                                         "trainable_params": bench.trainable_params(model)}


def test_table_reports_the_deformable_share_and_per_round_ratios(capsys):
    rows = [("vit-split", [10.0, 12.0], 100.0), ("vit-split-plain", [8.0, 9.0], 80.0), ("full", [15.0, 12.0], 150.0),
            ("vit-adapter", [40.0, 60.0], 300.0)]
    results = [dict(variant=name, size="s", times_s=times, step_s=sum(times) / 2, gflop=gflop, trainable_params=1e6,
                    peak_mib=1.0) for name, times, gflop in rows]
    ratios = bench.print_table(results, torch.device("cpu"), bench.DenseBenchConfig(), threads=1)
    out = capsys.readouterr().out
    assert ratios == {"s": pytest.approx(50 / 11)}
    assert "ViT-S: ViT-Adapter + UperNet / ViT-Split: step time 4.55x (4.00-5.00x per round), FLOPs 3.00x" in out
    assert "ViT-S: full fine-tuning / ViT-Split: step time 1.23x (1.00-1.50x per round), FLOPs 1.50x" in out
    # per round the deformable convs add 2 s of 10 s and 3 s of 12 s: median +2.50 s, shares 20% and 25%
    assert ("ViT-S: the deformable 3x3 convs cost +2.50s per step, 22.5% of the ViT-Split step (per round "
            "20.0%-25.0%), and +20.0 GFLOP, 20.0% of its FLOPs") in out


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "1"], "--batch-size must be at least 2 with vit-adapter"),
    (["--repeats", "0"], "--batch-size, --repeats and --threads must be at least 1 and --warmup at least 0."),
    (["--image-size", "500"], "--image-size 500 must be a multiple of 32"),
    (["--untimed", "vit-split"], "--untimed vit-split: ViT-Split's step is the reference of every time ratio; time it."),
    (["--untimed", "full:l"], "--untimed full:l: give a variant (vit-split, vit-split-plain, full, vit-adapter), "
                              "optionally with :s or :b."),
])
def test_bad_options_are_usage_errors(args, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench/dense_step.py", *args])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_worker_that_dies_stops_the_run_naming_it():
    with pytest.raises(SystemExit, match=r"ViT-S full failed in its process \(exit 3\)"):
        interleaved.Worker("ViT-S full", [sys.executable, "-c", "import sys; sys.exit(3)"])
