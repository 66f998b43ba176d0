"""ZeRO-3 partitioned construction, in one gloo rank: `from_components` under an active ZeRO-3 config creates every
part partitioned (zero.Init) and loads exactly what the whole-model path loads; stage-1 weights and the parameter
table go through gathered parameters. Two ranks: tests/test_real_shapes_train.py and the train CLI test."""
import pytest
import torch
from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

from vitsplit_vlm.models import VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.train.checkpoint import load_stage1_weights, non_lm_trainable_state, save_safetensors_atomic
from vitsplit_vlm.vision import split_preset
from vitsplit_vlm.zero3 import full_state_dict, is_partitioned

pytestmark = pytest.mark.usefixtures("gloo_rank")
ZERO3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1}
NEW_PARTS = ("vision.prior_head.", "vision.fusion.", "projector.")  # randomly initialised in both builds


def _build(tiny_ckpts, tower="clip", preset="clip-l-vlm"):
    return VitSplitLlavaForConditionalGeneration.from_components(tiny_ckpts[tower], tiny_ckpts["llama"], split_preset(preset))


def _build_zero3(tiny_ckpts, **kwargs):
    ds_config = HfDeepSpeedConfig(ZERO3)  # noqa: F841 (transformers keeps a weak reference while it lives)
    try:
        return _build(tiny_ckpts, **kwargs)
    finally:
        unset_hf_deepspeed_config()


@pytest.mark.parametrize("tower", ["clip", "siglip", "dinov2_reg"])  # output norm: none, LayerNorm, LayerNorm
def test_zero3_build_is_partitioned_and_holds_the_loaded_components(tiny_ckpts, tower):
    whole, part = _build(tiny_ckpts, tower), _build_zero3(tiny_ckpts, tower=tower)
    assert all(is_partitioned(p) and p.numel() == 0 for p in part.parameters())  # nothing whole on the module
    state, ref = full_state_dict(part), whole.state_dict()
    assert state.keys() == ref.keys()
    for key, value in ref.items():
        assert state[key].shape == value.shape, key
        if not key.startswith(NEW_PARTS):  # tower, task head (copied from it) and LM: exactly the checkpoints
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("vision.task_blocks.") for k in state)
    assert part.trainable_parameter_table() == whole.trainable_parameter_table()


def test_zero3_build_runs_the_same_forward(tiny_ckpts):
    """The partitioned model's new parts take the whole model's values; then both give the same logits."""
    import deepspeed

    whole, part = _build(tiny_ckpts).eval(), _build_zero3(tiny_ckpts).eval()
    whole_params = dict(whole.named_parameters())
    with deepspeed.zero.GatheredParameters(list(part.parameters()), modifier_rank=0), torch.no_grad():
        for name, param in part.named_parameters():
            param.copy_(whole_params[name])
    ids = torch.tensor([[1, *[whole.config.image_token_id] * whole.num_image_tokens, 5, 6]])
    pixels = torch.randn(1, 3, 28, 28)
    with deepspeed.zero.GatheredParameters(list(part.parameters())), torch.no_grad():
        torch.testing.assert_close(part(ids, pixels).logits, whole(ids, pixels).logits, rtol=1e-5, atol=1e-5)


def test_stage1_weights_load_into_a_partitioned_model(tiny_ckpts, tmp_path):
    source = _build(tiny_ckpts)
    source.set_trainable(["task_head", "prior_head", "projector"])
    with torch.no_grad():
        for p in source.projector.parameters():
            p.add_(1.0)  # values no fresh build has
    state = non_lm_trainable_state(source)
    save_safetensors_atomic(state, tmp_path / "non_lm_trainables.safetensors")
    part = _build_zero3(tiny_ckpts)
    assert load_stage1_weights(part, tmp_path) == sorted(state)
    loaded = full_state_dict(part)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
