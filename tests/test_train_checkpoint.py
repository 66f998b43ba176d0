"""The stage-1 -> stage-2 hand-off file: only trainable non-LM weights, exact round trip, incompatible files refused
by name; and the optimizer's per-part learning rates."""
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import TrainingArguments

from vitsplit_vlm.train.checkpoint import (
    STAGE1_WEIGHTS,
    IncompatibleCheckpointError,
    load_stage1_weights,
    non_lm_trainable_state,
    save_stage1_weights,
)
from vitsplit_vlm.atomic import save_safetensors_atomic
from vitsplit_vlm.train.checkpoint import PROVENANCE_KEY
from vitsplit_vlm.train.config import ModelConfig, StageConfig
from vitsplit_vlm.train.model_setup import Components, fresh_model
from vitsplit_vlm.train.trainer import VitSplitTrainer


def _model(tiny_ckpts, seed: int, **model_options):
    torch.manual_seed(seed)
    return fresh_model(ModelConfig(**model_options), Components(tiny_ckpts["clip"], tiny_ckpts["llama"]))


def _save_stage1(model, tmp_path):
    model.set_trainable(["projector", "prior_head"])
    return save_stage1_weights(non_lm_trainable_state(model), model, tmp_path / STAGE1_WEIGHTS)


def test_stage1_file_round_trip(tiny_ckpts, tmp_path):
    trained = _model(tiny_ckpts, seed=1)
    path = _save_stage1(trained, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [STAGE1_WEIGHTS]  # no temp file left behind
    saved = load_file(path)
    parts = trained.part_modules()
    expected = {n for n, p in trained.named_parameters()
                if any(p is q for m in parts["projector"] + parts["prior_head"] for q in m.parameters())}
    assert set(saved) == expected and all(k.startswith(("projector.", "vision.prior_head.", "vision.fusion.")) for k in saved)

    fresh = _model(tiny_ckpts, seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert sorted(load_stage1_weights(fresh, tmp_path)) == sorted(saved)  # a stage-1 dir works as well as the file
    after = fresh.state_dict()
    for key, value in after.items():
        torch.testing.assert_close(value, saved[key] if key in saved else before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)  # the two inits really differed


def test_incompatible_stage1_file_names_file_and_keys(tiny_ckpts, tmp_path):
    """Keys and shapes are checked even without a provenance record (a file from an older stage 1)."""
    model = _model(tiny_ckpts, seed=0)
    model.set_trainable(["projector", "prior_head"])
    path = save_safetensors_atomic(non_lm_trainable_state(model), tmp_path / STAGE1_WEIGHTS)
    other_projector = _model(tiny_ckpts, seed=0, projector_type="linear")
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_stage1_weights(other_projector, path)
    assert str(err.value).startswith(
        f"stage-1 weights {path} do not fit this model (keys the model does not have: projector.0.bias, "
        "projector.0.weight, projector.2.bias, projector.2.weight). Was it trained with another vision tower, "
        "split preset, projector type or language model?"
    )
    narrower = _model(tiny_ckpts, seed=0, split_options={"fusion_dim": 16})
    with pytest.raises(IncompatibleCheckpointError, match=re.escape(
        "shape mismatches: projector.0.weight (file (64, 32) vs model (64, 16)), vision.fusion.0.bias (file (32,) vs model (16,))"
    )):
        load_stage1_weights(narrower, path)
    untouched = {k: v.clone() for k, v in narrower.state_dict().items()}
    assert all(torch.equal(v, narrower.state_dict()[k]) for k, v in untouched.items())  # nothing half-loaded
    with pytest.raises(IncompatibleCheckpointError, match="stage 1 writes non_lm_trainables.safetensors into its output dir"):
        load_stage1_weights(narrower, tmp_path / "missing")


def test_optimizer_groups_give_each_part_its_lr(tiny_ckpts, tmp_path):
    model = _model(tiny_ckpts, seed=0)
    model.set_trainable(["task_head", "prior_head", "projector", "language_model"])
    stage = StageConfig(learning_rate=1e-3, projector_lr=1e-2, task_head_lr_mult=0.1, weight_decay=0.05)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=1e-3, weight_decay=0.05, report_to=[])
    optimizer = VitSplitTrainer(model=model, args=args, stage=stage).create_optimizer()
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = model.part_modules()
    expected_lr = {"task_head": 1e-3, "prior_head": 1e-2, "projector": 1e-2, "language_model": 1e-3}
    for part, lr in expected_lr.items():
        for module in parts[part]:
            for name, param in module.named_parameters():
                group = group_of[id(param)]
                assert group["lr"] == pytest.approx(lr), (part, name)
                no_decay = name.endswith("bias") or "norm" in name
                assert group["weight_decay"] == (0.0 if no_decay else 0.05), (part, name)
    assert not any(id(p) in group_of for m in parts["tower"] for p in m.parameters())  # frozen: not optimised


@pytest.mark.parametrize("optim, cls", [("adamw_torch", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_the_stage_optimizer_is_the_one_optim_names_with_per_part_groups(optim, cls, tiny_ckpts, tmp_path):
    from vitsplit_vlm.train.trainer import training_arguments

    model = _model(tiny_ckpts, seed=0)
    model.set_trainable(["projector", "language_model"])
    stage = StageConfig(optim=optim, learning_rate=1e-3, projector_lr=1e-2, trainer_args={"report_to": []})
    optimizer = VitSplitTrainer(model=model, args=training_arguments(stage, tmp_path, 0), stage=stage).create_optimizer()
    assert type(optimizer) is cls
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lrs[id(p)] for p in model.projector.parameters()} == {1e-2}
    assert {lrs[id(p)] for p in model.language_model.parameters()} == {1e-3}


def test_stage1_file_from_another_tower_is_refused_by_its_provenance(tiny_ckpts, tmp_path):
    clip_file = _save_stage1(_model(tiny_ckpts, seed=0), tmp_path / "clip")
    with safe_open(str(clip_file), framework="pt") as f:
        assert json.loads(f.metadata()[PROVENANCE_KEY])["vision_model_type"] == "clip_vision_model"
    torch.manual_seed(0)
    dinov2 = fresh_model(ModelConfig(), Components(tiny_ckpts["dinov2"], tiny_ckpts["llama"]))
    untouched = {k: v.clone() for k, v in dinov2.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_stage1_weights(dinov2, clip_file)
    assert str(err.value).startswith(f"stage-1 weights {clip_file} were trained on another model (")
    assert "vision_model_type: file 'clip_vision_model' vs model 'dinov2'" in str(err.value)
    assert all(torch.equal(v, dinov2.state_dict()[k]) for k, v in untouched.items())
    # a file without the record (an older stage 1) still loads on the key/shape check alone
    legacy = save_safetensors_atomic(load_file(clip_file), tmp_path / "legacy" / STAGE1_WEIGHTS)
    assert load_stage1_weights(_model(tiny_ckpts, seed=1), legacy)


def test_corrupt_stage1_file_is_named(tiny_ckpts, tmp_path):
    path = tmp_path / STAGE1_WEIGHTS
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(IncompatibleCheckpointError, match=rf"^stage-1 weights {re.escape(str(path))} are not a readable safetensors file \("):
        load_stage1_weights(_model(tiny_ckpts, seed=0), tmp_path)
