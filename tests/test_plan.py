"""The planner and its memory model: activation formulas against the bytes autograd really saves, parameter counts
against the published sizes and transformers' own models, verdicts and errors of `python -m vitsplit_vlm.plan`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from vitsplit_vlm.memory import llama_layer_activation_bytes, lm_head_activation_bytes, vit_block_activation_bytes
from vitsplit_vlm.plan import main
from vitsplit_vlm.shapes import shape_config, write_config_dir

ROOT = Path(__file__).resolve().parents[1]


def _saved_bytes(module, *args, **kwargs) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters and inputs excluded."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip |= {a.untyped_storage().data_ptr() for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args, **kwargs)
    return sum(n for ptr, n in seen.items() if ptr not in skip)


@pytest.mark.parametrize("hidden, intermediate", [(256, 688), (384, 512)])
def test_llama_layer_and_logits_estimates_match_autograd(hidden, intermediate):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4000, hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=4,
                         num_key_value_heads=4, num_hidden_layers=1, attn_implementation="sdpa")
    lm = LlamaForCausalLM(config).to(torch.bfloat16)
    x = torch.randn(2, 128, hidden, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 4000, (2, 128))
    with_layer = _saved_bytes(lm, inputs_embeds=x, labels=labels)
    lm.model.layers = lm.model.layers[:0]
    head = _saved_bytes(lm, inputs_embeds=x, labels=labels)
    assert with_layer - head == pytest.approx(llama_layer_activation_bytes(256, hidden, intermediate), rel=0.05)
    assert head == pytest.approx(lm_head_activation_bytes(256, hidden, 4000), rel=0.05)


@pytest.mark.parametrize("hidden, intermediate", [(256, 1024), (512, 1024)])
def test_vit_block_estimate_matches_autograd(hidden, intermediate):
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=4,
                              hidden_act="quick_gelu")
    config._attn_implementation = "sdpa"
    block = CLIPEncoderLayer(config).to(torch.bfloat16)
    x = torch.randn(2, 197, hidden, dtype=torch.bfloat16, requires_grad=True)
    assert _saved_bytes(block, x, None) == pytest.approx(vit_block_activation_bytes(394, hidden, intermediate), rel=0.05)


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {name: write_config_dir(name, root / name) for name in
            ("clip-vit-large-patch14-336", "vicuna-7b-v1.5", "vicuna-13b-v1.5")}


def _plan(capsys, config_dirs, config, lm="vicuna-7b-v1.5", *extra) -> tuple[int, str, str]:
    code = main(["--config", config, "--vision_tower", str(config_dirs["clip-vit-large-patch14-336"]),
                 "--language_model", str(config_dirs[lm]), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(out: str, part: str) -> tuple[int, int]:
    line = next(line for line in out.splitlines() if line.startswith(part + " "))
    trainable, total = line.split()[-2:]
    return int(trainable.replace(",", "")), int(total.replace(",", ""))


def test_7b_on_8x80_counts_parts_and_fits_the_configured_zero3(capsys, config_dirs):
    code, out, _ = _plan(capsys, config_dirs, "stage2_instruct", "vicuna-7b-v1.5", "--gpus", "8", "--gpu-memory", "80")
    assert code == 0
    # Oracles: transformers' own models of the same configs (meta device), and Vicuna-7B's published 6.74B.
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(shape_config("vicuna-7b-v1.5"))
        tower = CLIPVisionModel(shape_config("clip-vit-large-patch14-336"))
    assert _row(out, "language_model") == (lm.num_parameters(),) * 2 == (6_738_415_616,) * 2
    assert _row(out, "tower") == (0, tower.num_parameters())
    assert _row(out, "task_head")[0] == _row(out, "task_head")[1] > 0  # one CLIP block + identity norm: trained
    assert "576 image tokens" in out and "gradient checkpointing on" in out
    assert "verdict: the configured zero3 fits." in out


def test_13b_needs_the_fusion_width_of_the_lm(capsys, config_dirs):
    code, _, err = _plan(capsys, config_dirs, "stage2_instruct", "vicuna-13b-v1.5")
    assert code == 2
    assert err.strip().endswith("projector_type 'identity' needs visual tokens as wide as the LM (5120), got 4096; "
                                "set split fusion_dim=5120 or use 'mlp2x_gelu'.")
    code, out, _ = _plan(capsys, config_dirs, "stage2_instruct", "vicuna-13b-v1.5", "model.split_options.fusion_dim=5120")
    assert code == 0 and _row(out, "language_model")[1] == 13_015_864_320 and "the configured zero3 fits" in out
    assert "zero2          states" in out and "zero2" in [l.split()[0] for l in out.splitlines() if "does NOT fit" in l]


def test_lora_on_one_24gb_gpu_needs_offload(capsys, config_dirs):
    code, out, _ = _plan(capsys, config_dirs, "stage2_lora", "vicuna-7b-v1.5", "--gpus", "1", "--gpu-memory", "24")
    assert code == 0
    lora = 128 * 32 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))  # r x (in + out), 7 linears x 32 layers
    assert _row(out, "lora adapters") == (lora, lora)
    assert _row(out, "language_model") == (0, 6_738_415_616)
    assert "verdict: zero3 does not fit; options: zero3_offload" in out
    code, out, _ = _plan(capsys, config_dirs, "stage2_lora", "vicuna-7b-v1.5", "--gpus", "1", "--gpu-memory", "24",
                         "--host-memory", "16")
    assert "zero3_offload" in out and "does NOT fit (host RAM)" in out and "verdict: nothing fits" in out


def test_steps_per_epoch_come_from_the_data_file(capsys, config_dirs, tmp_path):
    data = tmp_path / "mix.json"
    data.write_text(json.dumps([{"id": str(i), "conversations": []} for i in range(1000)]))
    code, out, _ = _plan(capsys, config_dirs, "stage2_instruct", "vicuna-7b-v1.5",
                         f"stage2.data.train_json={data}", f"stage2.data.image_folder={tmp_path}")
    assert code == 0 and "data: 1,000 records / (16 x 8 GPUs x 2) = 4 steps per epoch" in out


def test_a_missing_component_dir_is_a_usage_error(capsys, tmp_path):
    assert main(["--config", "stage2_instruct", "--vision_tower", str(tmp_path), "--language_model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"model.vision_tower={tmp_path}: no config.json there; pass --vision_tower DIR (a config-only dir is enough)")


def test_the_readme_command_as_typed(config_dirs):
    cmd = [sys.executable, "-m", "vitsplit_vlm.plan", "--config", "configs/stage2_instruct.yaml", "--gpus", "8",
           "--gpu-memory", "80", "--vision_tower", str(config_dirs["clip-vit-large-patch14-336"]),
           "--language_model", str(config_dirs["vicuna-7b-v1.5"])]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verdict: the configured zero3 fits." in result.stdout
    help_ = subprocess.run([sys.executable, "-m", "vitsplit_vlm.plan", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0 and "--gpu-memory" in help_.stdout
