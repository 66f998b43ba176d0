"""The dense pipelines keep pixels and targets aligned, and padded / rotated-in / cropped-out regions are ignored.

The oracle: an image whose pixel value encodes its label (all channels = 10 x class id, classes in constant blocks),
so after any geometric transform a labelled pixel must still carry its own class's value.
"""
import colorsys

import pytest
import torch

from vitsplit_vlm.dense.data import DenseDataConfig
from vitsplit_vlm.dense.transforms import (
    DepthPipeline, SegPipeline, eigen_crop_mask, hsv_to_rgb, pad_to, photometric_distortion, random_crop,
    random_flip, random_rescale, random_rotate, rescale_size, rgb_to_hsv,
)


def _blocks(height=48, width=64, block=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, 20, (height // block, width // block), generator=g)
    labels = classes.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return (10.0 * labels).expand(3, -1, -1).clone(), labels


def _agreement(image, labels, ignore=255):
    """Share of labelled pixels whose image value is 10 x their class (blended block borders excepted)."""
    keep = labels != ignore
    return float(((image[0] - 10.0 * labels).abs() < 1e-3)[keep].float().mean())


def test_keep_ratio_rescale_size_is_mmcvs():
    # 512 x 683 into (2048, 512): the short side limits; a 2000 px wide panorama: the long side limits.
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(256, 2000, (2048, 512)) == (262, 2048)
    assert rescale_size(512, 683, (2048, 512), ratio=0.5) == (256, 342)


@pytest.mark.parametrize("seed", range(4))
def test_rescale_crop_flip_pad_keep_labels_on_their_pixels(seed):
    torch.manual_seed(seed)
    image, labels = _blocks()
    image, labels = random_rescale(image, labels, (256, 64), (0.5, 2.0))
    image, labels = random_crop(image, labels, (40, 40), cat_max_ratio=0.75)
    image, labels = random_flip(image, labels)
    image, labels = pad_to(image, labels, (40, 40), 255)
    assert image.shape == (3, 40, 40) and labels.shape == (40, 40)
    assert _agreement(image, labels) > 0.7  # nearest labels vs bilinear pixels differ only along block borders
    assert (image[:, labels == 255] == 0).all()  # padding: zero image, ignored labels


def test_crop_and_flip_are_exact():
    torch.manual_seed(0)
    image, labels = _blocks()
    for _ in range(5):
        i, l = random_flip(*random_crop(image, labels, (24, 32)))
        assert _agreement(i, l) == 1.0


def test_category_ratio_limit_redraws_dominated_crops():
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 48:] = 1  # class 0 fills 3/4 of the image: most 32 px windows see only class 0
    image = 10.0 * labels.expand(3, -1, -1).float()
    torch.manual_seed(0)
    limited = [random_crop(image, labels, (32, 32), cat_max_ratio=0.75)[1] for _ in range(50)]
    torch.manual_seed(0)
    free = [random_crop(image, labels, (32, 32))[1] for _ in range(50)]

    def dominated(window):
        return window.flatten().bincount(minlength=2).max() / window.numel() >= 0.75

    assert sum(map(dominated, limited)) < sum(map(dominated, free)) / 3


def test_ignored_pixels_do_not_count_towards_the_category_ratio():
    labels = torch.full((32, 64), 255, dtype=torch.long)
    labels[:, :4] = 0
    labels[:, 4:8] = 1
    image = torch.zeros(3, 32, 64)
    torch.manual_seed(0)
    # With ignore counted, no 32 px window would pass; without, windows holding both 0 and 1 in equal parts do.
    windows = [random_crop(image, labels, (32, 32), cat_max_ratio=0.75)[1] for _ in range(20)]
    assert any(((w == 0).sum() == (w == 1).sum() > 0) for w in windows)


def test_rotation_keeps_labels_aligned_and_ignores_rotated_in_corners():
    torch.manual_seed(1)
    image, labels = _blocks(64, 64, 16)
    rotated, target = random_rotate(image, labels, max_degree=10, prob=1.0, target_fill=255)
    assert (target == 255).any()  # corners rotated in from outside
    assert _agreement(rotated, target) > 0.8
    assert rotated[:, target == 255].mean() < 0.5 * image.mean()  # zero fill there (blended along the edge)


def test_hsv_round_trip_and_hue_against_colorsys():
    torch.manual_seed(0)
    rgb = torch.rand(3, 5, 7) * 255
    hsv = rgb_to_hsv(rgb)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, atol=1e-3, rtol=0)
    for y, x in [(0, 0), (2, 3), (4, 6)]:
        h, s, v = colorsys.rgb_to_hsv(*(rgb[:, y, x] / 255).tolist())
        torch.testing.assert_close(hsv[:, y, x], torch.tensor([h * 360, s * 255, v * 255]), atol=1e-3, rtol=0)


def test_photometric_distortion_is_a_per_pixel_colour_map():
    torch.manual_seed(3)
    colours = torch.rand(3, 1, 4) * 255
    image = colours.repeat(1, 6, 5)  # each of 4 colours in 6 x 5 places
    distorted = photometric_distortion(image)
    assert distorted.min() >= 0 and distorted.max() <= 255
    assert torch.equal(distorted, distorted[:, :1].expand_as(distorted))  # equal inputs, equal outputs: no geometry
    changed = [not torch.allclose(photometric_distortion(image), image) for _ in range(8)]
    assert any(changed)


def test_seg_pipeline_end_to_end_pads_with_ignore():
    torch.manual_seed(0)
    image, labels = _blocks(30, 40, 10)
    cfg = DenseDataConfig(crop_size=48, scale=[80, 20], photometric=False)  # rescaled to <= 40 rows: padded
    pixels, target = SegPipeline(cfg, [0, 0, 0], [1 / 255] * 3, 255, train=True)(image, labels)
    assert pixels.shape == (3, 48, 48) and target.shape == (48, 48)
    assert _agreement(pixels, target) > 0.7 and (target == 255).any() and (pixels[:, target == 255] == 0).all()


def test_eigen_crop_marks_depth_outside_missing():
    mask = eigen_crop_mask(480, 640)
    assert mask.sum() == (471 - 45) * (601 - 41) and mask[45, 41] and not mask[44, 41] and not mask[45, 601]
    depth = torch.full((480, 640), 3.0)
    cfg = DenseDataConfig(eigen_crop=True)
    _, target = DepthPipeline(cfg, [0.5] * 3, [0.5] * 3, train=False)(torch.zeros(3, 480, 640), depth)
    assert torch.equal(target > 0, mask)


def test_depth_pipeline_keeps_depth_on_its_pixels_and_pads_with_no_depth():
    torch.manual_seed(0)
    image, labels = _blocks(48, 64, 16)
    depth = labels.float() / 4  # metres
    cfg = DenseDataConfig(crop_size=[56, 56], rotate_degree=2.5, color_jitter=False)
    pixels, target = DepthPipeline(cfg, [0, 0, 0], [1 / 255] * 3, train=True)(image, depth)
    assert pixels.shape == (3, 56, 56) and target.shape == (56, 56)
    valid = target > 0
    agree = ((pixels[0] - 40.0 * target).abs() < 1e-3)[valid].float().mean()
    assert agree > 0.8 and (~valid[48:]).all() and (pixels[:, 48:] == 0).all()  # padded rows: no depth, zero
