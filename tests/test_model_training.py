"""What the trainer relies on: per-part freezing, parameter table, loss with masked labels, gradient checkpointing."""
import pytest
import torch
import torch.nn.functional as F

from vitsplit_vlm.models import TRAINABLE_PARTS, VitSplitLlavaForConditionalGeneration
from vitsplit_vlm.vision import split_preset

K = 4


def _build(tiny_ckpts, preset="clip-l-vlm"):
    torch.manual_seed(0)
    return VitSplitLlavaForConditionalGeneration.from_components(tiny_ckpts["clip"], tiny_ckpts["llama"], split_preset(preset))


def _numel(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _batch(model):
    img = model.config.image_token_id
    ids = torch.tensor([[1, *[img] * K, 5, 6, 7, 8], [1, 9, *[img] * K, 10, 11, 12]])
    labels = ids.clone()
    labels[ids == img] = -100
    labels[:, :2] = -100
    return ids, torch.randn(2, 3, 28, 28), labels


def test_set_trainable_per_stage_and_table(tiny_ckpts):
    model = _build(tiny_ckpts)
    vision = model.vision
    parts = model.part_modules()
    assert parts["task_head"] == [vision.task_blocks, vision.task_norm] and parts["tower"] == [vision.tower]
    assert list(parts) == ["tower", *TRAINABLE_PARTS]
    model.set_trainable({"task_head", "prior_head", "projector"})  # the paper's stage 1
    table = {row.part: (row.trainable, row.total) for row in model.trainable_parameter_table()}
    assert table == {
        "tower": (0, _numel(vision.tower)),
        "task_head": (_numel(vision.task_blocks, vision.task_norm),) * 2,
        "prior_head": (_numel(vision.prior_head, vision.fusion),) * 2,
        "projector": (_numel(model.projector),) * 2,
        "language_model": (0, _numel(model.language_model)),
    }
    model.set_trainable(TRAINABLE_PARTS)  # stage 2 (+ vision heads): everything but the tower
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if not n.startswith("vision.tower.")}
    model.set_trainable({"projector"})
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"projector"}


def test_set_trainable_rejects_unknown_and_missing_parts(tiny_ckpts):
    with pytest.raises(ValueError) as err:
        _build(tiny_ckpts).set_trainable({"tower", "projector"})
    assert str(err.value) == (
        "Unknown trainable parts ['tower']; choose from task_head, prior_head, projector, language_model "
        "(the vision tower always stays frozen)."
    )
    baseline = _build(tiny_ckpts, "llava-baseline")
    with pytest.raises(ValueError) as err:
        baseline.set_trainable({"task_head", "projector"})
    assert str(err.value) == (
        "['task_head'] do not exist with split.use_split=False (baseline); train projector and/or language_model."
    )
    assert [row.trainable for row in baseline.trainable_parameter_table()][:3] == [0, 0, 0]


def test_loss_is_next_token_cross_entropy_over_unmasked_labels(tiny_ckpts):
    model = _build(tiny_ckpts)
    ids, pixels, labels = _batch(model)
    out = model(ids, pixels, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    expected = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    assert (labels[ids == model.config.image_token_id] == -100).all()  # the model never rewrites labels


def test_gradient_checkpointing_reaches_the_lm_and_keeps_gradients(tiny_ckpts):
    model = _build(tiny_ckpts).train()
    ids, pixels, labels = _batch(model)

    def grads():
        model.zero_grad()
        model(ids, pixels, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.language_model.model.layers)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and any(n.startswith("vision.task_blocks") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
