"""Paired image/target augmentations of the dense pipelines, after mmsegmentation 0.x and the depth toolbox.

The ADE20K 512x512 pipeline (mmseg 0.x `configs/_base_/datasets/ade20k.py`, `mmseg/datasets/pipelines/transforms.py`
at commit 0066ce8): keep-ratio rescale into (2048, 512) x a ratio drawn from 0.5-2.0, a 512 crop redrawn (up to 10
times) while one class covers >= 75% of its labelled pixels, a horizontal flip, photometric distortion, normalise,
pad to the crop (labels with ignore). The NYU pipeline (Monocular-Depth-Estimation-Toolbox): a small rotation,
flip, crop and colour jitter; evaluation inside the Eigen crop.

Images are float tensors 3 x H x W in 0..255 (RGB); targets are H x W (class ids or depth in metres). Randomness
comes from torch's global RNG, which the Trainer seeds per run and the DataLoader per worker.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The Eigen crop of NYU-Depth-v2 evaluation (rows 45..470, columns 41..600 of the 480 x 640 frames), as fractions so
# that resized frames keep the same region.
EIGEN_CROP = (45 / 480, 471 / 480, 41 / 640, 601 / 640)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _coin(prob: float = 0.5) -> bool:
    return float(torch.rand(())) < prob


def resize(image: torch.Tensor, target: torch.Tensor | None, size: tuple[int, int]):
    """Bilinear for the image; nearest for the target, so class ids and depth holes are never blended."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    if target is not None:
        target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)
    return image, target


def rescale_size(height: int, width: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size whose long side fits scale[0]*ratio and short side scale[1]*ratio."""
    long_edge, short_edge = max(scale) * ratio, min(scale) * ratio
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_rescale(image, target, scale: tuple[int, int], ratio_range: tuple[float, float]):
    ratio = _uniform(*ratio_range)
    return resize(image, target, rescale_size(*image.shape[-2:], scale, ratio))


def random_crop(image, target, size: tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = 255):
    """A crop of at most `size` (smaller images keep their extent); with cat_max_ratio < 1 the window is redrawn up
    to 10 times while a single class covers >= cat_max_ratio of its non-ignored pixels."""
    height, width = image.shape[-2:]

    def draw() -> tuple[int, int]:
        return int(torch.randint(max(height - size[0], 0) + 1, ())), int(torch.randint(max(width - size[1], 0) + 1, ()))

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            window = target[top : top + size[0], left : left + size[1]]
            counts = window[window != ignore_index].unique(return_counts=True)[1]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return image[(..., *window)], target[window]


def random_flip(image, target, prob: float = 0.5):
    return (image.flip(-1), target.flip(-1)) if _coin(prob) else (image, target)


def pad_to(image, target, size: tuple[int, int], target_fill: float):
    """Pad bottom/right to at least `size`: the (normalised) image with 0, the target with `target_fill`."""
    pad_h, pad_w = max(size[0] - image.shape[-2], 0), max(size[1] - image.shape[-1], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
        target = F.pad(target[None], (0, pad_w, 0, pad_h), value=target_fill)[0]
    return image, target


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """3 x H x W RGB in 0..255 -> hue in degrees [0, 360), saturation and value in 0..255 (OpenCV's float form)."""
    r, g, b = image
    value, _ = image.max(0)
    delta = value - image.min(0).values
    saturation = torch.where(value > 0, 255 * delta / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = delta.clamp_min(1e-12)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, (60 * hue) % 360, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv
    chroma = value * saturation / 255
    sector = hue / 60
    x = chroma * (1 - (sector % 2 - 1).abs())
    zero = torch.zeros_like(hue)
    index = sector.floor().long() % 6
    choices = [(chroma, x, zero), (x, chroma, zero), (zero, chroma, x), (zero, x, chroma), (x, zero, chroma), (chroma, zero, x)]
    rgb = torch.zeros_like(hsv)
    for i, channels in enumerate(choices):
        rgb = torch.where(index == i, torch.stack(channels), rgb)
    return rgb + (value - chroma)


def photometric_distortion(
    image: torch.Tensor, brightness_delta: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion: brightness, then contrast either first or last, saturation and hue in HSV;
    each step with probability 0.5, clipped to 0..255. hue_delta is on OpenCV's 0..180 hue scale (2 degrees a unit)."""
    image = image.clone()
    if _coin():
        image = (image + _uniform(-brightness_delta, brightness_delta)).clamp(0, 255)
    contrast_first = _coin()
    if contrast_first and _coin():
        image = (image * _uniform(*contrast)).clamp(0, 255)
    change_saturation, change_hue = _coin(), _coin()
    if change_saturation or change_hue:
        hsv = rgb_to_hsv(image)
        if change_saturation:
            hsv[1] = (hsv[1] * _uniform(*saturation)).clamp(0, 255)
        if change_hue:
            hsv[0] = (hsv[0] + 2 * int(torch.randint(-hue_delta, hue_delta + 1, ()))) % 360
        image = hsv_to_rgb(hsv).clamp(0, 255)
    if not contrast_first and _coin():
        image = (image * _uniform(*contrast)).clamp(0, 255)
    return image


def random_rotate(image, target, max_degree: float, prob: float = 0.5, target_fill: float = 0.0):
    """Rotate about the centre by a uniform angle in [-max_degree, max_degree]; the target is sampled nearest and
    regions rotated in from outside get `target_fill` (no depth / ignore)."""
    if not _coin(prob):
        return image, target
    angle = math.radians(_uniform(-max_degree, max_degree))
    height, width = image.shape[-2:]
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid works in [-1, 1] per axis; the aspect ratio keeps the rotation rigid in pixels.
    theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]
    inside = F.grid_sample(torch.ones(1, 1, height, width), grid, mode="nearest", align_corners=False)[0, 0] > 0
    moved = F.grid_sample(target[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
    target = torch.where(inside, moved, torch.full_like(moved, target_fill)).to(target.dtype)
    return image, target


def color_jitter(image, gamma=(0.9, 1.1), brightness=(0.9, 1.1), color=(0.9, 1.1), prob: float = 0.5):
    """The depth toolbox's ColorAug: gamma, global brightness and per-channel colour factors, on 0..255."""
    if not _coin(prob):
        return image
    scaled = (image / 255).pow(_uniform(*gamma)) * _uniform(*brightness)
    factors = torch.tensor([_uniform(*color) for _ in range(3)]).view(3, 1, 1)
    return (scaled * factors).clamp(0, 1) * 255


def eigen_crop_mask(height: int, width: int) -> torch.Tensor:
    """True inside the Eigen crop of an H x W frame."""
    top, bottom, left, right = EIGEN_CROP
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[round(top * height) : round(bottom * height), round(left * width) : round(right * width)] = True
    return mask


def _pair(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class _Pipeline:
    """What both pipelines share: mean/std normalisation in 0-255 pixels and the eval-time keep-ratio rescale."""

    def __init__(self, cfg, mean: list[float], std: list[float], train: bool):
        self.cfg, self.train = cfg, train
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1) * 255, torch.tensor(std).view(3, 1, 1) * 255

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std

    def eval_image(self, image: torch.Tensor) -> torch.Tensor:
        """Eval images are rescaled into `scale` (keep ratio) and normalised; labels stay at their original size."""
        if self.cfg.scale:
            image, _ = resize(image, None, rescale_size(*image.shape[-2:], tuple(self.cfg.scale)))
        return self.normalize(image)


class SegPipeline(_Pipeline):
    """mmseg's ADE20K pipeline: train = rescale, cat-limited crop, flip, photometric distortion, normalise, pad
    (ignore_index); eval = keep-ratio rescale into `scale`, normalise (labels stay at their original size)."""

    def __init__(self, cfg, mean: list[float], std: list[float], ignore_index: int, train: bool):
        super().__init__(cfg, mean, std, train)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not self.train:
            return self.eval_image(image), target
        if cfg.scale:
            image, target = random_rescale(image, target, tuple(cfg.scale), tuple(cfg.ratio_range))
        crop = _pair(cfg.crop_size)
        image, target = random_crop(image, target, crop, cfg.cat_max_ratio, self.ignore_index)
        image, target = random_flip(image, target)
        if cfg.photometric:
            image = photometric_distortion(image)
        image, target = pad_to(self.normalize(image), target, crop, self.ignore_index)
        return image.contiguous(), target.contiguous()


class DepthPipeline(_Pipeline):
    """The depth toolbox's NYU pipeline: train = rotation, flip, crop (padded with no-depth), colour jitter,
    normalise; eval = normalise, depth outside the Eigen crop marked missing (0) so no metric counts it."""

    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not self.train:
            if cfg.eigen_crop:
                target = torch.where(eigen_crop_mask(*target.shape), target, torch.zeros_like(target))
            return self.eval_image(image), target
        if cfg.scale:
            image, target = random_rescale(image, target, tuple(cfg.scale), tuple(cfg.ratio_range))
        if cfg.rotate_degree:
            image, target = random_rotate(image, target, cfg.rotate_degree)
        image, target = random_flip(image, target)
        crop = _pair(cfg.crop_size)
        image, target = random_crop(image, target, crop)
        if cfg.color_jitter:
            image = color_jitter(image)
        image, target = pad_to(self.normalize(image), target, crop, 0.0)
        return image.contiguous(), target.contiguous()
