"""Shipped configs are package data addressed by name or path, from any directory, by every --config."""
import subprocess
import sys
from pathlib import Path

import pytest

from vitsplit_vlm.config import SHIPPED_CONFIGS, load_config, resolve_config, shipped_config_names
from vitsplit_vlm.dense.train import DenseRunConfig
from vitsplit_vlm.train.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
RUN_NAMES = "demo, dense_ade20k_vitb, dense_ade20k_vitl, dense_ade20k_vits, dense_depth, dense_nyu_vitb, dense_nyu_vitl, dense_nyu_vits, dense_seg, easy_vqa, stage1_align, stage2_instruct, stage2_lora"


def test_the_repository_configs_folder_is_the_package_data():
    assert (REPO / "configs").resolve() == SHIPPED_CONFIGS
    assert ", ".join(shipped_config_names()) == RUN_NAMES
    assert shipped_config_names("deepspeed") == ["zero2", "zero3", "zero3_offload"]


def test_a_name_and_a_path_resolve_to_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("stage2_lora") == SHIPPED_CONFIGS / "stage2_lora.yaml"
    assert resolve_config("zero3_offload", "deepspeed") == SHIPPED_CONFIGS / "deepspeed" / "zero3_offload.json"
    own = tmp_path / "stage2_lora"  # a user's file wins over the shipped name
    own.write_text("seed: 7\n")
    assert resolve_config("stage2_lora") == Path("stage2_lora")
    assert load_config(RunConfig, "stage2_lora").seed == 7
    by_path = load_config(RunConfig, REPO / "configs" / "stage2_lora.yaml")
    by_name = load_config(RunConfig, "stage1_align")
    assert by_path.stage2.deepspeed == str(SHIPPED_CONFIGS / "deepspeed" / "zero3.json")  # the YAML says `zero3`
    assert by_name.stage1.deepspeed == str(SHIPPED_CONFIGS / "deepspeed" / "zero2.json")
    dense = load_config(DenseRunConfig, "dense_seg", ["train.deepspeed=zero2"])
    assert dense.train.deepspeed == str(SHIPPED_CONFIGS / "deepspeed" / "zero2.json")


def test_unknown_names_list_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^Config stage3 does not exist: give a \.yaml file or a shipped name \({RUN_NAMES}\)\.$"):
        resolve_config("stage3")
    with pytest.raises(FileNotFoundError, match=r"^DeepSpeed config zero4 does not exist: give a \.json file or a shipped name \(zero2, zero3, zero3_offload\)\.$"):
        resolve_config("zero4", "deepspeed")
    with pytest.raises(FileNotFoundError, match=r"^Config .*missing\.yaml does not exist"):
        resolve_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("script", ["scripts/train_vqa.py", "scripts/train_dense.py"])
def test_a_bad_config_is_a_usage_error(script):
    result = subprocess.run([sys.executable, script, "--config", "stage3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"error: argument --config: Config stage3 does not exist: give a .yaml file or a shipped name ({RUN_NAMES}).")
