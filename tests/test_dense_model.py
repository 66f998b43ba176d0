"""DenseSplitModel: heads, losses, output frame, save/load, the VLM split loader, sliding-window inference."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsplit_vlm.dense import (
    DenseModelConfig, DenseSplitModel, LinearSegHead, predict, silog_loss, sliding_window,
)
from vitsplit_vlm.dense.inference import _window_starts
from vitsplit_vlm.vision import ViTSplitConfig

SPLIT = ViTSplitConfig(task_layers=2, prior_layers=[1, 3])


def _model(tiny_ckpts, **config) -> DenseSplitModel:
    torch.manual_seed(0)
    return DenseSplitModel.from_tower(tiny_ckpts["dinov2"], SPLIT, DenseModelConfig(**config))


@pytest.mark.parametrize("task, head, channels", [("seg", "linear", 5), ("seg", "multiscale", 5), ("depth", "linear", 1)])
def test_outputs_are_at_input_resolution_for_any_size(tiny_ckpts, task, head, channels):
    model = _model(tiny_ckpts, task=task, head=head, num_classes=5)
    out = model(torch.randn(2, 3, 30, 45))
    assert out.logits.shape == (2, channels, 30, 45) and out.loss is None


def test_linear_head_is_the_papers_4x_deconv_head():
    head = LinearSegHead(32, 7)
    deconvs = [m for m in head.up if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in deconvs] == [(32, 32, (2, 2), (2, 2))] * 2
    assert sum(isinstance(m, nn.GroupNorm) for m in head.up) == 2 and isinstance(head.norm, nn.BatchNorm2d)
    assert head(torch.randn(1, 32, 3, 5)).shape == (1, 7, 12, 20)


def test_padding_is_cropped_where_the_split_module_added_it(tiny_ckpts):
    """A 20 px input is centre-padded to 28: the output must be the middle 20 px of the 28 px prediction."""
    model = _model(tiny_ckpts, task="seg", num_classes=3).eval()
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        padded = model(F.pad(x, (4, 4, 4, 4))).logits
        assert torch.allclose(model(x).logits, padded[..., 4:24, 4:24], atol=1e-5)


def test_a_tower_that_drops_partial_patches_predicts_its_border_from_the_last_patches(tiny_ckpts):
    """SigLIP floors its grid: a 30 x 45 input is read as 28 x 42 (2 x 3 patches). The output keeps the input size,
    equals the prediction on those 28 x 42 pixels there, and repeats their last row / column over the rest."""
    torch.manual_seed(0)
    model = DenseSplitModel.from_tower(tiny_ckpts["siglip"], SPLIT, DenseModelConfig(task="seg", num_classes=3)).eval()
    x = torch.randn(1, 3, 30, 45)
    with torch.no_grad():
        full, covered = model(x).logits, model(x[..., :28, :42]).logits
    assert full.shape == (1, 3, 30, 45)
    torch.testing.assert_close(full[..., :28, :42], covered, atol=1e-5, rtol=0)
    torch.testing.assert_close(full[..., 28:, :42], covered[..., 27:28, :].expand(-1, -1, 2, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(full[..., 42:], full[..., 41:42].expand(-1, -1, -1, 3), atol=0, rtol=0)


def test_segmentation_loss_ignores_ignore_index(tiny_ckpts):
    model = _model(tiny_ckpts, task="seg", num_classes=4)
    labels = torch.randint(0, 4, (2, 28, 28))
    labels[:, :10] = 255
    out = model(torch.randn(2, 3, 28, 28), labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels, ignore_index=255))
    empty = model(torch.randn(1, 3, 28, 28), torch.full((1, 28, 28), 255))
    assert empty.loss.item() == 0.0


def test_silog_by_hand_and_scale_invariance():
    target = torch.tensor([2.0, 2.0, 2.0, 0.0])  # 0: no measurement
    log_pred = torch.log(torch.tensor([1.0, 2.0, 4.0, 123.0]))
    # g = (ln 1/2, 0, ln 2): mean 0, mean square 2 ln^2 2 / 3
    assert silog_loss(log_pred, target, lam=0.85, weight=10.0).item() == pytest.approx(10 * math.log(2) * math.sqrt(2 / 3))
    shifted = silog_loss(log_pred + math.log(3.0), target, lam=1.0, weight=1.0)
    assert shifted.item() == pytest.approx(silog_loss(log_pred, target, lam=1.0, weight=1.0).item())
    assert silog_loss(log_pred, torch.zeros(4)).item() == 0.0


def test_depth_is_clamped_and_loss_uses_valid_pixels(tiny_ckpts):
    model = _model(tiny_ckpts, task="depth", min_depth=0.5, max_depth=4.0, init_depth=100.0)
    x, target = torch.randn(1, 3, 28, 28), torch.full((1, 28, 28), 2.0)
    target[0, :, :14] = 0
    out = model(x, target)
    assert float(out.logits.detach().max()) <= 4.0 and float(out.logits.detach().min()) >= 0.5
    log_pred = model._to_input_frame(model.head(model.split(x).feature_map), (28, 28))
    assert torch.allclose(out.loss, silog_loss(log_pred, target[:, None], 0.85, 10.0))


def test_gradients_reach_heads_but_not_the_tower(tiny_ckpts):
    model = _model(tiny_ckpts, task="seg", num_classes=3).train()
    model(torch.randn(2, 3, 28, 28), torch.randint(0, 3, (2, 28, 28))).loss.backward()
    assert all(p.grad is None for p in model.split.tower.parameters())
    for part in (model.head, model.split.task_blocks, model.split.prior_head, model.split.fusion):
        assert all(p.grad is not None for p in part.parameters())
    assert not model.split.tower.training


def test_mismatched_label_size_is_a_clear_error(tiny_ckpts):
    with pytest.raises(ValueError, match=r"^labels are \(14, 14\) but pixel_values are \(28, 28\); they must match\.$"):
        _model(tiny_ckpts, num_classes=3)(torch.randn(1, 3, 28, 28), torch.zeros(1, 14, 14, dtype=torch.long))


def test_save_and_load_round_trip(tiny_ckpts, tmp_path):
    model = _model(tiny_ckpts, task="depth", init_depth=2.0).eval()
    with torch.no_grad():
        model.head.out.weight.add_(0.1)  # not an initial value
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    loaded = DenseSplitModel.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.split.config == model.split.config
    x = torch.randn(1, 3, 35, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert not any(p.requires_grad for p in loaded.split.tower.parameters())


def test_sharded_checkpoint_loads_like_a_single_file(tiny_ckpts, tmp_path):
    """A 7B VLM is saved in shards: the reader follows model.safetensors.index.json."""
    import json

    from safetensors.torch import load_file, save_file

    model = _model(tiny_ckpts, num_classes=3).eval()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / name)
    weight_map = {k: name for name, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(DenseSplitModel.from_pretrained(tmp_path)(x).logits, model(x).logits)


def test_window_starts_cover_the_border():
    assert _window_starts(53, 16, 10) == [0, 10, 20, 30, 37]
    assert _window_starts(16, 16, 10) == [0] and _window_starts(9, 16, 10) == [0]


def test_sliding_window_equals_whole_image_for_a_translation_consistent_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        whole, slid = conv(x), sliding_window(conv, x, crop_size=16, stride=10)
    torch.testing.assert_close(slid, whole)
    counts = sliding_window(lambda w: torch.ones(w.shape[0], 1, *w.shape[-2:]), x, 16, 10)
    assert torch.equal(counts, torch.ones(2, 1, 37, 53))  # every pixel covered (0/0 would be NaN)
    with pytest.raises(ValueError, match=r"^stride 17 must be in 1\.\.crop_size \(16\)"):
        sliding_window(conv, x, 16, 17)


def test_predict_with_windows_on_a_model(tiny_ckpts):
    model = _model(tiny_ckpts, task="seg", num_classes=3)
    x = torch.randn(1, 3, 40, 60)
    assert predict(model, x, crop_size=28, stride=14).shape == (1, 3, 40, 60)
    torch.testing.assert_close(predict(model, x[..., :28, :28], 28, 14), predict(model, x[..., :28, :28]))


def test_a_new_task_is_one_registered_class(tiny_ckpts):
    """A third task plugs into the model, the loss and evaluation by registering a DenseTask."""
    from vitsplit_vlm.dense import TASKS, DenseTask, evaluate, register_task

    class Edges(DenseTask):  # per-pixel binary edge probability
        name, formats, synthetic_layout = "edges", (), "ade20k"

        def build_head(self, config, channels):
            return nn.Conv2d(channels, 1, 1)

        def outputs(self, head_map, labels, config):
            loss = None if labels is None else F.binary_cross_entropy_with_logits(head_map[:, 0], labels.float())
            return loss, head_map.sigmoid()

        def metric(self, config):
            from vitsplit_vlm.dense import SegmentationMetric

            return SegmentationMetric(2)

        def prediction(self, output):
            return (output[:, 0] > 0.5).long()

        def datasets(self, root, data, config):
            raise NotImplementedError

    register_task(Edges())
    try:
        model = _model(tiny_ckpts, task="edges")
        labels = torch.randint(0, 2, (2, 28, 28))
        out = model(torch.randn(2, 3, 28, 28), labels)
        assert out.logits.shape == (2, 1, 28, 28) and out.loss.requires_grad
        items = [{"pixel_values": torch.randn(3, 28, 28), "labels": labels[0]}]
        assert 0 <= evaluate(model, items)["mIoU"] <= 1
    finally:
        del TASKS["edges"]
    with pytest.raises(ValueError, match=r"^Unknown dense task 'edges'; choose one of depth, seg\.$"):
        DenseModelConfig(task="edges")


def test_flip_tta_averages_probabilities_of_both_views(tiny_ckpts):
    model = _model(tiny_ckpts, task="seg", num_classes=3).eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        expected = (model(x).logits.softmax(1) + model(x.flip(-1)).logits.flip(-1).softmax(1)) / 2
    torch.testing.assert_close(predict(model, x, flip=True), expected)
    two_scales = predict(model, x, scales=[1.0, 2.0])
    with torch.no_grad():
        big = model(F.interpolate(x, size=(56, 84), mode="bilinear", align_corners=False)).logits
    small = F.interpolate(big, size=(28, 42), mode="bilinear", align_corners=False)
    torch.testing.assert_close(two_scales, (model(x).logits.softmax(1) + small.softmax(1)).detach() / 2)


def test_depth_checkpoint_records_the_deformable_variant(tiny_ckpts, tmp_path):
    torch.manual_seed(0)
    deform = ViTSplitConfig(task_layers=2, prior_layers=[1, 3], deformable=True)
    model = DenseSplitModel.from_tower(tiny_ckpts["dinov2"], deform, DenseModelConfig(task="depth"))
    model.save_pretrained(tmp_path)
    loaded = DenseSplitModel.from_pretrained(tmp_path)
    assert loaded.split.config.deformable and any(".offset." in k for k in loaded.state_dict())
    plain = _model(tiny_ckpts, task="depth")
    with pytest.raises(ValueError, match="hold the deformable 3x3 prior/fusion conv but the split config asks for the plain"):
        plain.load_state_dict(loaded.state_dict())
