"""Dense metrics against hand-computed values."""
import math

import pytest
import torch

from vitsplit_vlm.dense.metrics import DepthMetric, SegmentationMetric

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])  # the last pixel is ignored whatever is predicted there


def test_segmentation_metrics_by_hand():
    metric = SegmentationMetric(num_classes=3, ignore_index=255)
    metric.update(PRED, TARGET)
    out = metric.compute()
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: 1/1
    assert out["IoU"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert out["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert out["aAcc"] == pytest.approx(4 / 5)
    assert out["mAcc"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_absent_class_is_left_out_and_updates_accumulate():
    metric = SegmentationMetric(num_classes=4)
    metric.update(PRED[:1], TARGET[:1])
    metric.update(PRED[1:], TARGET[1:])
    out = metric.compute()
    assert math.isnan(out["IoU"][3])
    assert out["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_out_of_range_target_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^target holds class 3 outside 0\.\.2 \(ignore_index=255\); check num_classes"):
        SegmentationMetric(num_classes=3).update(torch.tensor([0, 3]), torch.tensor([0, 3]))


def test_depth_metrics_by_hand():
    pred = torch.tensor([[1.5, 2.0, 4.0, 7.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 0.0]])  # 0 = no measurement: excluded
    metric = DepthMetric(min_depth=1e-3, max_depth=10.0)
    metric.update(pred, target)
    out = metric.compute()
    assert out["abs_rel"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert out["sq_rel"] == pytest.approx((0.25 / 2 + 0 + 4 / 2) / 3)
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 4) / 3))
    assert out["rmse_log"] == pytest.approx(math.sqrt((math.log(0.75) ** 2 + math.log(2) ** 2) / 3))
    assert out["log10"] == pytest.approx((abs(math.log10(0.75)) + math.log10(2)) / 3)
    # ratios 4/3, 1, 2 against 1.25, 1.5625, 1.953
    assert (out["delta1"], out["delta2"], out["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_depth_metrics_average_per_image_and_clamp_predictions():
    metric = DepthMetric(min_depth=0.1, max_depth=10.0)
    # image 1: one valid pixel, abs_rel 1; image 2: two valid pixels, abs_rel 0 (20 m is clamped to 10)
    metric.update(torch.tensor([[[2.0, 5.0]], [[1.0, 20.0]]]), torch.tensor([[[1.0, 0.0]], [[1.0, 10.0]]]))
    metric.update(torch.tensor([[[3.0]]]), torch.tensor([[[12.0]]]))  # beyond max_depth: no valid pixel, not counted
    assert metric.count == 2
    assert metric.compute()["abs_rel"] == pytest.approx(0.5)


def test_no_valid_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="^No image with valid depth was seen"):
        DepthMetric().compute()
