"""bench/dense_step.py: the ViT-Adapter re-implementation against independent checks, the paper's parameter counts,
every variant stepping (tiny shapes), and the script's --smoke run as a user types it."""
import importlib.util
import json
import os
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
    count = bench.trainable_params(bench.build_variant(variant, bench.DenseBenchConfig(size=size))) / 1e6
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


def test_smoke_run_prints_the_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "bench/dense_step.py", "--smoke", "--json", str(tmp_path / "smoke.json")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["variant"] for r in summary["results"]] == list(bench.VARIANTS)
    assert all(r["gflop"] > 0 and r["step_s"] > 0 for r in summary["results"])
    assert "ViT-TINY: ViT-Split step" in result.stdout and "faster than ViT-Adapter + UperNet" in result.stdout
