"""bench/vision_step.py on a tiny tower: every variant builds and steps, and trains what it claims to train."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vitsplit_vlm.vision import ViTSplitConfig

_PATH = Path(__file__).resolve().parents[1] / "bench" / "vision_step.py"
_spec = importlib.util.spec_from_file_location("bench_vision_step", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(bench)

CPU = torch.device("cpu")


def _tiny() -> "bench.BenchConfig":
    return bench.BenchConfig(
        hidden_size=32, num_layers=4, num_heads=2, image_size=28, batch_size=2, lora_rank=4, adapter_heads=2,
        split=ViTSplitConfig(task_layers=1, prior_layers=[1, 3]),
    )


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
